//! Video files (MP4, MKV, WebM, MOV, AVI, ...) decoded with the system FFmpeg libraries: the
//! counterpart of decord in the reference `load_video` (spec §7.3). Only with the `video` feature
//! (crate `ffmpeg-next` over libavformat, libavcodec, libavutil, libswscale and libavfilter, found by
//! pkg-config; Debian: `apt-get install libavcodec-dev libavformat-dev libavutil-dev libswscale-dev
//! libavfilter-dev pkg-config`).
//!
//! What matches decord, and how:
//! - the stream is FFmpeg's "best" video stream (`av_find_best_stream`, as decord), cover pictures
//!   excluded;
//! - `fps` is the stream's `avg_frame_rate` (decord's `get_avg_fps()`);
//! - `num_frames` is the number of packets the demuxer returns for that stream, which is what
//!   decord's `len()` counts (it indexes every packet on open). The container's own `nb_frames` is
//!   often missing (MKV, WebM) or wrong, so it is only reported ([`VideoInfo::container_frames`]);
//! - frame `i` is the `i`-th frame the decoder outputs (presentation order);
//! - each frame becomes RGB24 through a libavfilter `scale` filter, as decord ([`SCALE_FILTER`]: its flags,
//!   and the frame's own colour matrix and range tags); no scaling: frames keep their coded size;
//! - rotation metadata is ignored. decord 0.6.0 does not ignore it: for a clip tagged `rotate=90` it returns
//!   transposed frames, as 4-channel arrays (seen with a 64x48 clip: shape (64, 48, 4)), which looks like a
//!   decord bug; rotated clips are not matched.
//!
//! Frames are bit-identical to decord 0.6.0's `VideoReader(path, ctx=cpu(0), num_threads=1)[i].asnumpy()`
//! (yuv420p/yuv444p/yuvj420p, BT.601/BT.709, limited/full range, odd sizes, red-panda.mp4: measured in
//! `tests/video_ffmpeg.rs` against frames made by `tests/py/make_video_fixtures.py`).
//!
//! Untrusted input: the file is opened through FFmpeg's `file` protocol only (no network, no
//! `concat:`/`pipe:` URLs, also for playlists that name other files), the frame size is checked
//! against [`Limits::max_pixels`] before decoding and the kept frames against
//! [`Limits::max_total_pixels`]. A demuxer or decoder error is an error, not a shorter video.
//!
//! ```no_run
//! use internvl::image::{ffmpeg, video, Limits};
//! let path = std::path::Path::new("red-panda.mp4");
//! let info = ffmpeg::probe(path, &Limits::default())?;
//! let idx = video::frame_indices(info.num_frames, info.fps, 8, None)?;
//! let frames = ffmpeg::read_frames(path, &idx, &Limits::default())?;
//! let tiles = video::preprocess_frames(&frames, 448)?; // 8 x one 448² tile
//! // Or in one call: ffmpeg::sample(path, 8, None, &Limits::default())?.frames
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ff::format::stream::Disposition;
use ffmpeg_next as ff;

use super::decode::Limits;
use super::video::frame_indices;
use super::RgbImage;

/// The conversion to RGB24, as decord does it (`scale=W:H` in a filter graph with FFmpeg 4.1, whose `scale`
/// filter defaults to `flags=bilinear`; FFmpeg >= 5 defaults to bicubic, hence the explicit flag). The size
/// does not change, so swscale takes its unscaled YUV → RGB path: chroma is not interpolated and the fast
/// (not `accurate_rnd`) rounding is used. The matrix (BT.601, BT.709, ...) and range (limited or full)
/// come from each frame's tags, BT.601 and the pixel format's range when untagged. Measured equal to decord
/// 0.6.0 (bundled FFmpeg 4.1) with Debian's FFmpeg 5.1: `tests/video_ffmpeg.rs`.
pub const SCALE_FILTER: &str = "scale=flags=bilinear";

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while reading a video file. Each variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file cannot be opened (missing, unreadable, a directory).
    #[error("cannot read video file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// FFmpeg needs a UTF-8 path without NUL bytes.
    #[error("video file {path}: the path must be valid UTF-8 (FFmpeg takes it as a string)")]
    BadPath { path: PathBuf },
    /// FFmpeg does not recognise the file as a media container.
    #[error("{path}: not a video file FFmpeg can read ({detail})")]
    NotAVideo { path: PathBuf, detail: String },
    /// FFmpeg reads the file as one still image (JPEG, PNG, ...), not as a video.
    #[error("{path}: a still image ({format}), not a video; pass it with --image")]
    StillImage { path: PathBuf, format: String },
    /// The container has no video stream (audio only, or only a cover picture).
    #[error("{path}: no video stream among its {streams} stream(s)")]
    NoVideoStream { path: PathBuf, streams: u32 },
    /// The video codec has no decoder in this FFmpeg, or the decoder refuses the stream.
    #[error("{path}: cannot decode {codec} video: {detail}")]
    Codec {
        path: PathBuf,
        codec: String,
        detail: String,
    },
    /// The frame size is over [`Limits::max_pixels`] (checked before decoding).
    #[error("{path}: frames are {width}x{height} = {pixels} pixels, over the limit of {limit} pixels")]
    TooManyPixels {
        path: PathBuf,
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    /// A frame has a zero width or height.
    #[error("{path}: frame {frame} has zero size ({width}x{height})")]
    ZeroSize {
        path: PathBuf,
        frame: usize,
        width: u32,
        height: u32,
    },
    /// The frames asked for total more than [`Limits::max_total_pixels`].
    #[error("{path}: the {frames} frames asked for total {pixels} pixels, over the limit of {limit}")]
    TooManyTotalPixels {
        path: PathBuf,
        frames: usize,
        pixels: u64,
        limit: u64,
    },
    /// Neither `avg_frame_rate` nor `r_frame_rate` nor the duration gives a frame rate.
    #[error("{path}: the video stream has no frame rate")]
    NoFrameRate { path: PathBuf },
    /// The demuxer failed before the end of the file: a corrupt or truncated file.
    #[error("{path}: corrupt or truncated video: reading failed after {packets} frame(s) of the stream: {detail}")]
    Read {
        path: PathBuf,
        packets: usize,
        detail: String,
    },
    /// The decoder failed on a packet: corrupt data.
    #[error("{path}: corrupt video: decoding failed after {frames} frame(s): {detail}")]
    Decode {
        path: PathBuf,
        frames: usize,
        detail: String,
    },
    /// The decoder produced fewer frames than the frame index asked for.
    #[error(
        "{path}: frame {wanted} was asked for but the video decodes to only {decoded} frame(s) (corrupt or truncated?)"
    )]
    MissingFrame {
        path: PathBuf,
        wanted: usize,
        decoded: usize,
    },
    /// swscale cannot convert the decoded pixel format to RGB24.
    #[error("{path}: cannot convert frame {frame} ({format}) to RGB: {detail}")]
    Convert {
        path: PathBuf,
        frame: usize,
        format: String,
        detail: String,
    },
    /// Frame sampling (`frame_indices`): fewer frames than segments, a bad bound, ...
    #[error("{path}: {source}")]
    Sampling {
        path: PathBuf,
        #[source]
        source: super::Error,
    },
}

/// What [`probe`] learns about a video file.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoInfo {
    /// Frames of the video stream: the packets its demuxer returns (decord's `len()`); frame indices
    /// run over `0..num_frames`.
    pub num_frames: usize,
    /// The stream's average frame rate (`avg_frame_rate`, decord's `get_avg_fps()`); when the
    /// container has none, `r_frame_rate`, then `num_frames / duration`.
    pub fps: f64,
    /// Coded frame size from the stream header (frames may differ if the stream changes size).
    pub width: u32,
    pub height: u32,
    /// `nb_frames` as the container states it (`None` when absent, e.g. MKV/WebM); not trusted.
    pub container_frames: Option<u64>,
    /// FFmpeg's codec name (`h264`, `vp9`, ...).
    pub codec: String,
    /// FFmpeg's demuxer name (`mov,mp4,m4a,3gp,3g2,mj2`, `matroska,webm`, ...).
    pub container: String,
}

/// Frames sampled by [`sample`].
#[derive(Clone, Debug)]
pub struct Sampled {
    pub info: VideoInfo,
    /// The frame indices (spec §7.3 `get_index`), in order.
    pub indices: Vec<usize>,
    /// One RGB frame per index.
    pub frames: Vec<RgbImage>,
}

/// Reads the header and counts the video stream's packets (no decoding).
pub fn probe(path: &Path, limits: &Limits) -> Result<VideoInfo> {
    let mut input = open(path)?;
    let container = input.format().name().to_owned();
    let (index, decoder) = video_stream(path, &input)?;
    let (width, height) = (decoder.width(), decoder.height());
    check_size(path, width, height, limits)?;
    let codec = decoder.id().name().to_owned();
    let stream = input.stream(index).ok_or_else(|| no_video(path, &input))?;
    let container_frames = u64::try_from(stream.frames()).ok().filter(|&n| n > 0);
    let rates = [stream.avg_frame_rate(), stream.rate()];
    let duration_s = seconds(stream.duration(), stream.time_base())
        // The container's duration is in AV_TIME_BASE (microsecond) units.
        .or_else(|| seconds(input.duration(), ff::Rational::new(1, 1_000_000)));
    let num_frames = count_packets(path, &mut input, index)?;
    let fps = rates
        .iter()
        .map(|&r| f64::from(r))
        .chain(duration_s.map(|d| num_frames as f64 / d))
        .find(|f| f.is_finite() && *f > 0.0)
        .ok_or_else(|| Error::NoFrameRate {
            path: path.to_path_buf(),
        })?;
    Ok(VideoInfo {
        num_frames,
        fps,
        width,
        height,
        container_frames,
        codec,
        container,
    })
}

/// Decodes the video stream from the start and returns frame `i` (the `i`-th frame the decoder
/// outputs) for each `i` in `indices`, in that order (indices may repeat and need not be sorted).
/// Decoding stops after the last frame asked for; only the frames asked for are converted to RGB.
pub fn read_frames(path: &Path, indices: &[usize], limits: &Limits) -> Result<Vec<RgbImage>> {
    let Some(&last) = indices.iter().max() else {
        return Ok(Vec::new());
    };
    let mut input = open(path)?;
    let (index, mut decoder) = video_stream(path, &input)?;
    let (w, h) = (decoder.width(), decoder.height());
    check_size(path, w, h, limits)?;
    let pixels = u64::from(w) * u64::from(h) * indices.len() as u64;
    if pixels > limits.max_total_pixels {
        return Err(Error::TooManyTotalPixels {
            path: path.to_path_buf(),
            frames: indices.len(),
            pixels,
            limit: limits.max_total_pixels,
        });
    }

    let mut kept: BTreeMap<usize, Option<RgbImage>> = indices.iter().map(|&i| (i, None)).collect();
    let mut rgb = Rgb::default();
    let mut decoded = 0usize;
    let mut total = 0u64;
    let mut frame = ff::frame::Video::empty();
    // Takes every frame the decoder has ready; true once the last wanted frame is in.
    let mut drain = |decoder: &mut ff::decoder::Video, decoded: &mut usize| -> Result<bool> {
        loop {
            match decoder.receive_frame(&mut frame) {
                Ok(()) => {
                    let i = *decoded;
                    *decoded += 1;
                    if let Some(slot) = kept.get_mut(&i) {
                        let (fw, fh) = (frame.width(), frame.height());
                        check_size(path, fw, fh, limits).map_err(|e| match e {
                            Error::ZeroSize {
                                path, width, height, ..
                            } => Error::ZeroSize {
                                path,
                                frame: i,
                                width,
                                height,
                            },
                            e => e,
                        })?;
                        total = total.saturating_add(u64::from(fw) * u64::from(fh));
                        if total > limits.max_total_pixels {
                            return Err(Error::TooManyTotalPixels {
                                path: path.to_path_buf(),
                                frames: indices.len(),
                                pixels: total,
                                limit: limits.max_total_pixels,
                            });
                        }
                        *slot = Some(rgb.convert(path, i, &frame)?);
                    }
                    if i >= last {
                        return Ok(true);
                    }
                }
                Err(ff::Error::Other {
                    errno: ff::error::EAGAIN,
                })
                | Err(ff::Error::Eof) => return Ok(false),
                Err(e) => {
                    return Err(Error::Decode {
                        path: path.to_path_buf(),
                        frames: *decoded,
                        detail: e.to_string(),
                    })
                }
            }
        }
    };

    let mut packets = 0usize;
    let mut done = false;
    let mut packet = ff::Packet::empty();
    while !done {
        match read_packet(path, &mut input, &mut packet, packets)? {
            false => break,
            true if packet.stream() != index => continue,
            true => check_packet(path, &packet, packets)?,
        }
        packets += 1;
        decoder.send_packet(&packet).map_err(|e| Error::Decode {
            path: path.to_path_buf(),
            frames: decoded,
            detail: e.to_string(),
        })?;
        done = drain(&mut decoder, &mut decoded)?;
    }
    if !done {
        // End of file: flush the frames the decoder still holds (B-frame reordering, threads).
        decoder.send_eof().map_err(|e| Error::Decode {
            path: path.to_path_buf(),
            frames: decoded,
            detail: e.to_string(),
        })?;
        done = drain(&mut decoder, &mut decoded)?;
    }
    if !done {
        return Err(Error::MissingFrame {
            path: path.to_path_buf(),
            wanted: last,
            decoded,
        });
    }
    indices
        .iter()
        .map(|i| {
            kept.get(i).cloned().flatten().ok_or(Error::MissingFrame {
                path: path.to_path_buf(),
                wanted: *i,
                decoded,
            })
        })
        .collect()
}

/// The reference `load_video` up to the frames: probe, pick `num_segments` frames with
/// [`frame_indices`] (spec §7.3) and decode them. Fewer frames than segments is an error.
pub fn sample(path: &Path, num_segments: usize, bound: Option<(f64, f64)>, limits: &Limits) -> Result<Sampled> {
    let info = probe(path, limits)?;
    let indices = frame_indices(info.num_frames, info.fps, num_segments, bound).map_err(|source| Error::Sampling {
        path: path.to_path_buf(),
        source,
    })?;
    let frames = read_frames(path, &indices, limits)?;
    Ok(Sampled { info, indices, frames })
}

/// Opens the file through FFmpeg's `file` protocol only and refuses still images.
fn open(path: &Path) -> Result<ff::format::context::Input> {
    // A readable regular file: clear io errors before FFmpeg's terser ones.
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "is a directory"),
        });
    }
    std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // ffmpeg-next turns the path into a C string and panics on non-UTF-8 or NUL: check first.
    let text = path
        .to_str()
        .filter(|s| !s.contains('\0'))
        .ok_or_else(|| Error::BadPath {
            path: path.to_path_buf(),
        })?;
    init();
    // "file:" makes a name such as "http:x.mp4" a file; the whitelist also binds nested opens
    // (playlists, references inside MOV).
    let url = format!("file:{text}");
    let mut opts = ff::Dictionary::new();
    opts.set("protocol_whitelist", "file");
    let input = ff::format::input_with_dictionary(&url, opts).map_err(|e| Error::NotAVideo {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let name = input.format().name().to_owned();
    // FFmpeg opens single images through its image demuxers (`image2`, `jpeg_pipe`, `png_pipe`, ...).
    if name == "image2" || name.ends_with("_pipe") {
        return Err(Error::StillImage {
            path: path.to_path_buf(),
            format: name,
        });
    }
    Ok(input)
}

/// Global FFmpeg set-up, once (a no-op on FFmpeg ≥ 5 apart from error strings).
fn init() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        // It cannot fail (always Ok in ffmpeg-next 9).
        let _ = ff::init();
    });
}

/// The best video stream (as decord: `av_find_best_stream`) that is not a cover picture, with its
/// decoder opened (frame threads, as many as FFmpeg picks).
fn video_stream(path: &Path, input: &ff::format::context::Input) -> Result<(usize, ff::decoder::Video)> {
    let is_video = |s: &ff::Stream| {
        s.parameters().medium() == ff::media::Type::Video && !s.disposition().contains(Disposition::ATTACHED_PIC)
    };
    let stream = input
        .streams()
        .best(ff::media::Type::Video)
        .filter(is_video)
        .or_else(|| input.streams().find(is_video))
        .ok_or_else(|| no_video(path, input))?;
    let codec = stream.parameters().id().name().to_owned();
    let codec_err = |e: ff::Error| Error::Codec {
        path: path.to_path_buf(),
        codec: codec.clone(),
        detail: e.to_string(),
    };
    let mut ctx = ff::codec::context::Context::from_parameters(stream.parameters()).map_err(codec_err)?;
    ctx.set_threading(ff::threading::Config::kind(ff::threading::Type::Frame));
    let mut decoder = ctx.decoder();
    decoder.set_packet_time_base(stream.time_base());
    let decoder = decoder.video().map_err(codec_err)?;
    Ok((stream.index(), decoder))
}

fn no_video(path: &Path, input: &ff::format::context::Input) -> Error {
    Error::NoVideoStream {
        path: path.to_path_buf(),
        streams: input.nb_streams(),
    }
}

fn check_size(path: &Path, width: u32, height: u32, limits: &Limits) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::ZeroSize {
            path: path.to_path_buf(),
            frame: 0,
            width,
            height,
        });
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(Error::TooManyPixels {
            path: path.to_path_buf(),
            width,
            height,
            pixels,
            limit: limits.max_pixels,
        });
    }
    Ok(())
}

/// `ts` in `base` units as seconds; `None` when unknown (FFmpeg's AV_NOPTS_VALUE is negative).
fn seconds(ts: i64, base: ff::Rational) -> Option<f64> {
    let s = ts as f64 * f64::from(base);
    (ts > 0 && s.is_finite() && s > 0.0).then_some(s)
}

/// Reads the next packet: `Ok(false)` at the end of the file, an error for anything else that
/// stops the demuxer (`packets`: the stream's packets read so far, for the message).
fn read_packet(
    path: &Path,
    input: &mut ff::format::context::Input,
    packet: &mut ff::Packet,
    packets: usize,
) -> Result<bool> {
    match packet.read(input) {
        Ok(()) => Ok(true),
        Err(ff::Error::Eof) => Ok(false),
        // A truncated MP4 gives INVALIDDATA ("partial file") for every missing sample; a corrupt
        // one may resync, but decord stops at the first error too: either way it is not the video
        // the file claims to be.
        Err(e) => Err(Error::Read {
            path: path.to_path_buf(),
            packets,
            detail: e.to_string(),
        }),
    }
}

/// The stream's packets up to the end of the file (decord's frame count).
fn count_packets(path: &Path, input: &mut ff::format::context::Input, index: usize) -> Result<usize> {
    let mut packet = ff::Packet::empty();
    let mut n = 0usize;
    while read_packet(path, input, &mut packet, n)? {
        if packet.stream() == index {
            check_packet(path, &packet, n)?;
            n += 1;
        }
    }
    Ok(n)
}

/// A packet the demuxer could only read in part (FFmpeg flags a short read as corrupt: the file
/// ends inside it) or knows to be damaged is an error, not a frame.
fn check_packet(path: &Path, packet: &ff::Packet, packets: usize) -> Result<()> {
    if packet.is_corrupt() {
        return Err(Error::Read {
            path: path.to_path_buf(),
            packets,
            detail: format!(
                "packet {packets} of the stream is cut short or damaged ({} bytes read)",
                packet.size()
            ),
        });
    }
    Ok(())
}

/// YUV (or whatever the decoder gives) → packed RGB24 the way decord does it: a libavfilter graph
/// `buffer → scale → buffersink(rgb24)` (decord's `FFMPEGFilterGraph` with its `scale` filter). The graph,
/// not a bare swscale context, matters: the `scale` filter reads each frame's colour matrix and range tags
/// (BT.709, full range, ...) and hands them to swscale, which a bare context ignores. The graph is reused
/// while the frame format and size stay the same.
#[derive(Default)]
struct Rgb {
    graph: Option<(ff::format::Pixel, u32, u32, ff::filter::Graph)>,
}

impl Rgb {
    fn convert(&mut self, path: &Path, i: usize, frame: &ff::frame::Video) -> Result<RgbImage> {
        let (fmt, w, h) = (frame.format(), frame.width(), frame.height());
        let err = |detail: String| Error::Convert {
            path: path.to_path_buf(),
            frame: i,
            format: format!("{fmt:?}"),
            detail,
        };
        if !matches!(&self.graph, Some((f, gw, gh, _)) if (*f, *gw, *gh) == (fmt, w, h)) {
            self.graph = None;
        }
        let graph = match &mut self.graph {
            Some((_, _, _, g)) => g,
            slot => &mut slot.insert((fmt, w, h, rgb_graph(fmt, w, h).map_err(err)?)).3,
        };
        let mut out = ff::frame::Video::empty();
        {
            let mut src = graph
                .get("in")
                .ok_or_else(|| err("filter graph without source".into()))?;
            src.source()
                .add(frame)
                .map_err(|e| err(format!("filter graph input: {e}")))?;
        }
        let mut sink = graph
            .get("out")
            .ok_or_else(|| err("filter graph without sink".into()))?;
        sink.sink()
            .frame(&mut out)
            .map_err(|e| err(format!("filter graph output: {e}")))?;
        if (out.format(), out.width(), out.height()) != (ff::format::Pixel::RGB24, w, h) || out.planes() == 0 {
            return Err(err(format!(
                "filter graph returned {:?} {}x{}",
                out.format(),
                out.width(),
                out.height()
            )));
        }
        let row = 3 * w as usize;
        let (stride, data) = (out.stride(0), out.data(0));
        let mut rgb = Vec::with_capacity(row * h as usize);
        for y in 0..h as usize {
            let line = data
                .get(y * stride..y * stride + row)
                .ok_or_else(|| err(format!("RGB plane too short at row {y} (stride {stride})")))?;
            rgb.extend_from_slice(line);
        }
        RgbImage::from_raw(w, h, rgb).ok_or_else(|| err("RGB buffer size mismatch".into()))
    }
}

/// The filter graph of [`Rgb`]: `buffer` (the decoded frame) → [`SCALE_FILTER`] → `buffersink` (RGB24).
fn rgb_graph(fmt: ff::format::Pixel, w: u32, h: u32) -> std::result::Result<ff::filter::Graph, String> {
    let filter = |name: &str| ff::filter::find(name).ok_or_else(|| format!("FFmpeg has no `{name}` filter"));
    let mut graph = ff::filter::Graph::new();
    let pix_fmt = ff::ffi::AVPixelFormat::from(fmt) as i32;
    let args = format!("video_size={w}x{h}:pix_fmt={pix_fmt}:time_base=1/1:pixel_aspect=1/1");
    let e = |what: &str, e: ff::Error| format!("{what}: {e}");
    graph
        .add(&filter("buffer")?, "in", &args)
        .map_err(|x| e("buffer source", x))?;
    let mut sink = graph
        .add(&filter("buffersink")?, "out", "")
        .map_err(|x| e("buffer sink", x))?;
    sink.set_pixel_format(ff::format::Pixel::RGB24);
    graph
        .output("in", 0)
        .and_then(|p| p.input("out", 0))
        .and_then(|p| p.parse(SCALE_FILTER))
        .map_err(|x| e("filter graph", x))?;
    graph.validate().map_err(|x| e("filter graph", x))?;
    Ok(graph)
}
