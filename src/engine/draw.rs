//! Drawing grounding boxes (spec §9) with their labels onto the original image, for `--draw-boxes`.
//! Labels use a small built-in 5×7 bitmap font (ASCII letters, digits and common punctuation;
//! lower case is drawn as upper case, anything else as a hollow box), so no font file is needed.
use std::path::Path;

use ::image::{Rgb, RgbImage};

use crate::prompt::grounding::PixelBox;

use super::error::{EngineError, Result};

/// Box colours, cycled per box.
const PALETTE: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
];

const GLYPH_W: u32 = 5;
const GLYPH_H: u32 = 7;
/// Longest label drawn (characters); longer ones end with "..".
const MAX_LABEL: usize = 40;

/// Draws each box as a rectangle outline with its label (when it has one) on a filled tag above
/// the box, or inside its top edge when there is no room above. Coordinates outside the image are
/// clipped; boxes with x2 < x1 or y2 < y1 are normalized.
pub fn draw_boxes(image: &mut RgbImage, boxes: &[PixelBox]) {
    let (w, h) = image.dimensions();
    if w == 0 || h == 0 {
        return;
    }
    let short = w.min(h);
    let thick = (short / 250).max(1);
    let scale = (short / 300).clamp(1, 4);
    for (k, b) in boxes.iter().enumerate() {
        let color = Rgb(PALETTE[k % PALETTE.len()]);
        let clampx = |v: f32| (v.round().max(0.0) as u32).min(w - 1);
        let clampy = |v: f32| (v.round().max(0.0) as u32).min(h - 1);
        let (x1, x2) = (clampx(b.x1.min(b.x2)), clampx(b.x1.max(b.x2)));
        let (y1, y2) = (clampy(b.y1.min(b.y2)), clampy(b.y1.max(b.y2)));
        for t in 0..thick {
            hline(image, x1, x2, y1.saturating_add(t).min(y2), color);
            hline(image, x1, x2, y2.saturating_sub(t).max(y1), color);
            vline(image, x1.saturating_add(t).min(x2), y1, y2, color);
            vline(image, x2.saturating_sub(t).max(x1), y1, y2, color);
        }
        if let Some(label) = b.label.as_deref().filter(|l| !l.trim().is_empty()) {
            let text = label_text(label);
            let tag_h = (GLYPH_H + 2) * scale;
            let tag_w = text.chars().count() as u32 * (GLYPH_W + 1) * scale + scale;
            let ty = if y1 >= tag_h { y1 - tag_h } else { y1 };
            fill(image, x1, ty, tag_w, tag_h, color);
            draw_text(image, x1 + scale, ty + scale, &text, scale, Rgb([255, 255, 255]));
        }
    }
}

/// Draws the boxes on a copy of `image` and writes it (format from the extension, e.g. `.png`).
pub fn save_with_boxes(image: &RgbImage, boxes: &[PixelBox], out: &Path) -> Result<()> {
    let mut canvas = image.clone();
    draw_boxes(&mut canvas, boxes);
    canvas.save(out).map_err(|e| match e {
        ::image::ImageError::IoError(source) => EngineError::Io {
            path: out.to_path_buf(),
            source,
        },
        other => EngineError::Param(format!("cannot write {}: {other}", out.display())),
    })
}

fn label_text(label: &str) -> String {
    let label = label.trim();
    if label.chars().count() <= MAX_LABEL {
        label.to_owned()
    } else {
        let mut s: String = label.chars().take(MAX_LABEL - 2).collect();
        s.push_str("..");
        s
    }
}

fn put(image: &mut RgbImage, x: u32, y: u32, c: Rgb<u8>) {
    if x < image.width() && y < image.height() {
        image.put_pixel(x, y, c);
    }
}

fn hline(image: &mut RgbImage, x1: u32, x2: u32, y: u32, c: Rgb<u8>) {
    for x in x1..=x2 {
        put(image, x, y, c);
    }
}

fn vline(image: &mut RgbImage, x: u32, y1: u32, y2: u32, c: Rgb<u8>) {
    for y in y1..=y2 {
        put(image, x, y, c);
    }
}

fn fill(image: &mut RgbImage, x0: u32, y0: u32, w: u32, h: u32, c: Rgb<u8>) {
    let (iw, ih) = image.dimensions();
    for y in y0..y0.saturating_add(h).min(ih) {
        for x in x0..x0.saturating_add(w).min(iw) {
            image.put_pixel(x, y, c);
        }
    }
}

fn draw_text(image: &mut RgbImage, x0: u32, y0: u32, text: &str, scale: u32, c: Rgb<u8>) {
    for (i, ch) in text.chars().enumerate() {
        let gx = x0 + i as u32 * (GLYPH_W + 1) * scale;
        for (row, bits) in glyph(ch).iter().enumerate() {
            for (col, b) in bits.bytes().enumerate() {
                if b != b'#' {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        put(image, gx + col as u32 * scale + dx, y0 + row as u32 * scale + dy, c);
                    }
                }
            }
        }
    }
}

/// The 5×7 bitmap of a character ('#' = ink).
fn glyph(c: char) -> [&'static str; 7] {
    match c.to_ascii_uppercase() {
        ' ' => [".....", ".....", ".....", ".....", ".....", ".....", "....."],
        'A' => [".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"],
        'B' => ["####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."],
        'C' => [".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."],
        'D' => ["####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."],
        'E' => ["#####", "#....", "#....", "####.", "#....", "#....", "#####"],
        'F' => ["#####", "#....", "#....", "####.", "#....", "#....", "#...."],
        'G' => [".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"],
        'H' => ["#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"],
        'I' => [".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."],
        'J' => ["..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."],
        'K' => ["#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"],
        'L' => ["#....", "#....", "#....", "#....", "#....", "#....", "#####"],
        'M' => ["#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"],
        'N' => ["#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"],
        'O' => [".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."],
        'P' => ["####.", "#...#", "#...#", "####.", "#....", "#....", "#...."],
        'Q' => [".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"],
        'R' => ["####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"],
        'S' => [".####", "#....", "#....", ".###.", "....#", "....#", "####."],
        'T' => ["#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."],
        'U' => ["#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."],
        'V' => ["#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."],
        'W' => ["#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."],
        'X' => ["#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"],
        'Y' => ["#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."],
        'Z' => ["#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"],
        '0' => [".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."],
        '1' => ["..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."],
        '2' => [".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"],
        '3' => ["#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."],
        '4' => ["...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."],
        '5' => ["#####", "#....", "####.", "....#", "....#", "#...#", ".###."],
        '6' => ["..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."],
        '7' => ["#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."],
        '8' => [".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."],
        '9' => [".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."],
        '.' => [".....", ".....", ".....", ".....", ".....", ".##..", ".##.."],
        ',' => [".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."],
        ':' => [".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."],
        ';' => [".....", ".##..", ".##..", ".....", ".##..", "..#..", ".#..."],
        '-' => [".....", ".....", ".....", "#####", ".....", ".....", "....."],
        '_' => [".....", ".....", ".....", ".....", ".....", ".....", "#####"],
        '\'' => ["..#..", "..#..", ".....", ".....", ".....", ".....", "....."],
        '"' => [".#.#.", ".#.#.", ".....", ".....", ".....", ".....", "....."],
        '(' => ["...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."],
        ')' => [".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."],
        '[' => [".###.", ".#...", ".#...", ".#...", ".#...", ".#...", ".###."],
        ']' => [".###.", "...#.", "...#.", "...#.", "...#.", "...#.", ".###."],
        '/' => [".....", "....#", "...#.", "..#..", ".#...", "#....", "....."],
        '?' => [".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#.."],
        '!' => ["..#..", "..#..", "..#..", "..#..", "..#..", ".....", "..#.."],
        '+' => [".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."],
        '=' => [".....", ".....", "#####", ".....", "#####", ".....", "....."],
        '#' => [".#.#.", ".#.#.", "#####", ".#.#.", "#####", ".#.#.", ".#.#."],
        _ => ["#####", "#...#", "#...#", "#...#", "#...#", "#...#", "#####"],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pb(label: Option<&str>, x1: f32, y1: f32, x2: f32, y2: f32) -> PixelBox {
        PixelBox {
            label: label.map(str::to_owned),
            x1,
            y1,
            x2,
            y2,
        }
    }

    #[test]
    fn glyphs_are_5_by_7() {
        for c in (' '..='~').chain(['é', '猫']) {
            for row in glyph(c) {
                assert_eq!(row.len(), GLYPH_W as usize, "{c:?}");
            }
        }
    }

    #[test]
    fn outline_and_label_land_where_expected() {
        let mut im = RgbImage::from_pixel(200, 100, Rgb([0, 0, 0]));
        draw_boxes(&mut im, &[pb(Some("cat"), 40.0, 30.0, 120.0, 80.0)]);
        let red = Rgb(PALETTE[0]);
        // Corners and edges of the outline.
        for (x, y) in [(40, 30), (120, 30), (40, 80), (120, 80), (80, 80), (40, 55), (120, 55)] {
            assert_eq!(*im.get_pixel(x, y), red, "({x},{y})");
        }
        // Inside stays untouched (below the label tag), outside too.
        assert_eq!(*im.get_pixel(80, 60), Rgb([0, 0, 0]));
        assert_eq!(*im.get_pixel(150, 90), Rgb([0, 0, 0]));
        // The tag sits above the box (y 21..30) and holds white text.
        assert_eq!(*im.get_pixel(40, 21), red);
        let white = (40..60)
            .flat_map(|x| (21..30).map(move |y| (x, y)))
            .filter(|&(x, y)| *im.get_pixel(x, y) == Rgb([255; 3]))
            .count();
        assert!(white > 10, "label text drawn ({white} white pixels)");
    }

    #[test]
    fn boxes_outside_or_reversed_are_clipped() {
        let mut im = RgbImage::new(10, 10);
        draw_boxes(&mut im, &[pb(None, 50.0, -5.0, -20.0, 500.0)]);
        assert_eq!(*im.get_pixel(0, 5), Rgb(PALETTE[0]));
        assert_eq!(*im.get_pixel(9, 5), Rgb(PALETTE[0]));
        assert_eq!(*im.get_pixel(5, 5), Rgb([0, 0, 0]));
        // A label far wider than the image is cut at the edge without panicking.
        draw_boxes(&mut im, &[pb(Some(&"x".repeat(200)), 0.0, 0.0, 9.0, 9.0)]);
        assert_eq!(label_text(&"x".repeat(200)).len(), MAX_LABEL);
    }
}
