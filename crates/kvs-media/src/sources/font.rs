//! A tiny 5x7 bitmap font (digits, ':' and '.') for drawing the frame counter and clock into
//! the test pattern's luma plane.

/// Glyph width and height in font pixels.
pub const GLYPH_W: usize = 5;
pub const GLYPH_H: usize = 7;

/// Rows of a glyph, 5 bits each (bit 4 is the leftmost pixel). Unknown characters are blank.
pub fn glyph(c: char) -> [u8; GLYPH_H] {
    match c {
        '0' => [0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e],
        '1' => [0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e],
        '2' => [0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f],
        '3' => [0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e],
        '4' => [0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02],
        '5' => [0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e],
        '6' => [0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e],
        '7' => [0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e],
        '9' => [0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c],
        ':' => [0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c],
        _ => [0; GLYPH_H],
    }
}

/// Draw `text` into a luma plane of `stride` bytes per row at (x, y), each font pixel `scale`
/// pixels wide, `fg` on `bg` (one font pixel of `bg` margin around the text). Clipped to the
/// plane; never writes out of bounds.
#[allow(clippy::too_many_arguments)]
pub fn draw_text(
    plane: &mut [u8],
    stride: usize,
    height: usize,
    x: usize,
    y: usize,
    scale: usize,
    text: &str,
    fg: u8,
    bg: u8,
) {
    let advance = (GLYPH_W + 1) * scale;
    let chars = text.chars().count();
    let box_w = chars * advance + scale;
    let box_h = (GLYPH_H + 2) * scale;
    for row in y..(y + box_h).min(height) {
        let start = row * stride + x.min(stride);
        let end = row * stride + (x + box_w).min(stride);
        plane[start..end].fill(bg);
    }
    for (i, c) in text.chars().enumerate() {
        let rows = glyph(c);
        let gx = x + scale + i * advance;
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..GLYPH_W {
                if bits & (0x10 >> col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    let py = y + scale + r * scale + dy;
                    if py >= height {
                        continue;
                    }
                    let px0 = gx + col * scale;
                    if px0 >= stride {
                        continue;
                    }
                    let px1 = (px0 + scale).min(stride);
                    plane[py * stride + px0..py * stride + px1].fill(fg);
                }
            }
        }
    }
}

/// The (width, height) in pixels that [`draw_text`] covers.
pub fn text_box(text: &str, scale: usize) -> (usize, usize) {
    let chars = text.chars().count();
    (chars * (GLYPH_W + 1) * scale + scale, (GLYPH_H + 2) * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_digits_and_clips() {
        let (w, h) = (40, 12);
        let mut plane = vec![0u8; w * h];
        draw_text(&mut plane, w, h, 0, 0, 1, "10", 255, 9);
        // '1' top row is 0x04: pixel at column 1+2 of row 1.
        assert_eq!(plane[w + 3], 255);
        assert_eq!(plane[w + 1], 9);
        // Clipping: drawing past the edges must not panic.
        draw_text(&mut plane, w, h, 35, 8, 3, "12:34.5", 255, 0);
        assert_eq!(text_box("12", 2), (26, 18));
    }
}
