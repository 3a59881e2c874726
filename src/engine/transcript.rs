//! Saved conversations (`/save`, `/load`): a small JSON file with the system message, each turn's
//! rendered question, its images by path, and the answers. Images are decoded again on load;
//! their embeddings and the KV cache are reused when the content matches what the chat holds.
//!
//! ```json
//! {"format": "internvl-conversation", "version": 1, "system": "...",
//!  "turns": [{"user": "<image>\nWhat is this?", "images": [{"path": "/abs/a.jpg"}], "video": false,
//!             "assistant": "A cat."}]}
//! ```
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::image::TilingParams;

use super::chat::{Chat, TurnRecord};
use super::error::{EngineError, Result};
use super::vision_input::{Image, ImageSource};

/// The `format` value of a transcript file.
pub const FORMAT: &str = "internvl-conversation";
/// The `version` this build writes and reads.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    pub format: String,
    pub version: u32,
    pub system: String,
    pub turns: Vec<TranscriptTurn>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptTurn {
    /// The question as rendered into the template, with its `<image>` placeholders.
    pub user: String,
    #[serde(default)]
    pub images: Vec<TranscriptImage>,
    /// The images are video frames (one tile each).
    #[serde(default)]
    pub video: bool,
    pub assistant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptImage {
    /// Absolute when written by `save`; a relative path is taken relative to the transcript file.
    pub path: PathBuf,
    /// For a video frame from a GIF or (the `video` feature) a video file: the frame's index in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gif_frame: Option<usize>,
}

impl Transcript {
    /// The transcript of a chat's history.
    pub fn of(chat: &Chat) -> Result<Transcript> {
        let mut turns = Vec::with_capacity(chat.turns().len());
        for (ti, t) in chat.turns().iter().enumerate() {
            let mut images = Vec::with_capacity(t.images.len());
            for (ii, im) in t.images.iter().enumerate() {
                let (path, gif_frame) = match im.source() {
                    ImageSource::File(p) => (p.clone(), None),
                    ImageSource::GifFrame { path, index } | ImageSource::VideoFrame { path, index } => {
                        (path.clone(), Some(*index))
                    }
                    ImageSource::Memory => return Err(EngineError::UnsavableImage { turn: ti, index: ii }),
                };
                let path = std::fs::canonicalize(&path).unwrap_or(path);
                images.push(TranscriptImage { path, gif_frame });
            }
            turns.push(TranscriptTurn {
                user: t.user.clone(),
                images,
                video: t.video,
                assistant: t.assistant.clone(),
            });
        }
        Ok(Transcript {
            format: FORMAT.into(),
            version: VERSION,
            system: chat.system().to_owned(),
            turns,
        })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(|e| EngineError::Transcript {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        std::fs::write(path, json + "\n").map_err(|e| EngineError::Io {
            path: path.to_path_buf(),
            source: e,
        })
    }

    pub fn read(path: &Path) -> Result<Transcript> {
        let bad = |detail: String| EngineError::Transcript {
            path: path.to_path_buf(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let t: Transcript = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if t.format != FORMAT {
            return Err(bad(format!("format is {:?}, expected {FORMAT:?}", t.format)));
        }
        if t.version != VERSION {
            return Err(bad(format!(
                "version {} is not supported (this build reads version {VERSION})",
                t.version
            )));
        }
        Ok(t)
    }

    /// Decodes the images again and replaces the chat's system message and history. Images are
    /// tiled with the chat's current tiling (video frames with one tile).
    pub fn restore(&self, chat: &mut Chat, base_dir: &Path) -> Result<()> {
        let tiling = chat.tiling();
        let frame_tiling = TilingParams::video_frame(tiling.image_size);
        let mut turns = Vec::with_capacity(self.turns.len());
        for t in &self.turns {
            let mut images = Vec::with_capacity(t.images.len());
            for im in &t.images {
                let path = if im.path.is_absolute() {
                    im.path.clone()
                } else {
                    base_dir.join(&im.path)
                };
                let tl = if t.video { &frame_tiling } else { &tiling };
                let image = match im.gif_frame {
                    None => Image::open(&path, tl)?,
                    Some(index) => Image::frame_of(&path, index, tl)?,
                };
                images.push(image);
            }
            turns.push(TurnRecord {
                user: t.user.clone(),
                images,
                video: t.video,
                assistant: t.assistant.clone(),
            });
        }
        chat.set_turns(turns)?;
        chat.set_system(self.system.clone());
        Ok(())
    }
}

impl Chat {
    /// Writes the history to `path` (see [`Transcript`]).
    pub fn save(&self, path: &Path) -> Result<()> {
        Transcript::of(self)?.save(path)
    }

    /// Replaces the history with the one saved at `path`. The next turn reuses the KV cache as far
    /// as the loaded conversation matches it.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let t = Transcript::read(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        t.restore(self, base)
    }
}
