//! Frames to pictures: PNG strips and animated GIFs of RGB frames in [-1, 1].
use std::path::Path;

use crate::{Result, TrainError};

/// An RGB image, 8 bits per channel, row-major `[h, w, 3]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb {
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// Pixels.
    pub data: Vec<u8>,
}

impl Rgb {
    /// A blank (dark grey) image.
    pub fn blank(height: usize, width: usize) -> Self {
        Rgb {
            height,
            width,
            data: vec![40; height * width * 3],
        }
    }

    /// A frame `[c, h, w]` in [-1, 1], scaled up `scale` times (nearest):
    /// RGB when c = 3, otherwise the first channel in grey.
    pub fn from_frame(frame: &[f32], h: usize, w: usize, scale: usize) -> Self {
        let mut img = Rgb::blank(h * scale, w * scale);
        let rgb = frame.len() == 3 * h * w;
        for y in 0..h * scale {
            for x in 0..w * scale {
                for c in 0..3 {
                    let src = if rgb { c } else { 0 };
                    let v = frame[(src * h + y / scale) * w + x / scale];
                    img.data[(y * w * scale + x) * 3 + c] =
                        ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
                }
            }
        }
        img
    }

    /// Copy `src` into this image with its top-left corner at (x, y).
    pub fn paste(&mut self, src: &Rgb, x: usize, y: usize) {
        for row in 0..src.height.min(self.height.saturating_sub(y)) {
            let n = src.width.min(self.width.saturating_sub(x)) * 3;
            let dst = ((y + row) * self.width + x) * 3;
            self.data[dst..dst + n]
                .copy_from_slice(&src.data[row * src.width * 3..row * src.width * 3 + n]);
        }
    }

    /// Encode as PNG.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc
            .write_header()
            .map_err(|e| TrainError::Io(format!("PNG: {e}")))?;
        w.write_image_data(&self.data)
            .map_err(|e| TrainError::Io(format!("PNG: {e}")))?;
        drop(w);
        Ok(out)
    }
}

/// Lay images out in a grid of `rows` x `cols` with a `gap`-pixel border.
pub fn grid(images: &[Rgb], cols: usize, gap: usize) -> Rgb {
    let (h, w) = (images[0].height, images[0].width);
    let rows = images.len().div_ceil(cols);
    let mut out = Rgb::blank(rows * (h + gap) + gap, cols * (w + gap) + gap);
    for (i, img) in images.iter().enumerate() {
        out.paste(
            img,
            gap + (i % cols) * (w + gap),
            gap + (i / cols) * (h + gap),
        );
    }
    out
}

/// Write an animated, looping GIF of equally sized frames.
pub fn write_gif(path: &Path, frames: &[Rgb], delay_cs: u16) -> Result<()> {
    let err = |e: String| TrainError::Io(format!("{}: {e}", path.display()));
    let file = std::fs::File::create(path).map_err(|e| err(e.to_string()))?;
    let (w, h) = (frames[0].width as u16, frames[0].height as u16);
    let mut enc = gif::Encoder::new(file, w, h, &[]).map_err(|e| err(e.to_string()))?;
    enc.set_repeat(gif::Repeat::Infinite)
        .map_err(|e| err(e.to_string()))?;
    for f in frames {
        let mut frame = gif::Frame::from_rgb_speed(w, h, &f.data, 10);
        frame.delay = delay_cs;
        enc.write_frame(&frame).map_err(|e| err(e.to_string()))?;
    }
    Ok(())
}
