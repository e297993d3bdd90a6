package datasets

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
)

// decodeImage decodes a JPEG or PNG held in data into dst (HWC, reusing dst.Pix). The
// header is read first and an image wider or taller than maxSide is refused before any
// pixel memory is allocated. Grayscale images keep one channel; all others become RGB.
func decodeImage(data []byte, maxSide int, dst *Image) error {
	cfg, format, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("read image header: %w", err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return fmt.Errorf("image header: size %dx%d is empty", cfg.Width, cfg.Height)
	}
	if cfg.Width > maxSide || cfg.Height > maxSide {
		return fmt.Errorf("image header: size %dx%d exceeds the %d-pixel limit per side",
			cfg.Width, cfg.Height, maxSide)
	}

	// Decoders are called by name so that formats registered elsewhere in the program
	// (GIF, BMP, ...) are refused rather than silently accepted.
	var img image.Image
	switch format {
	case "jpeg":
		img, err = jpeg.Decode(bytes.NewReader(data))
	case "png":
		img, err = png.Decode(bytes.NewReader(data))
	default:
		return fmt.Errorf("image format %q: want JPEG or PNG", format)
	}
	if err != nil {
		return fmt.Errorf("decode %s: %w", format, err)
	}
	b := img.Bounds()
	if b.Dx() != cfg.Width || b.Dy() != cfg.Height {
		return fmt.Errorf("decode %s: pixels are %dx%d but the header says %dx%d",
			format, b.Dx(), b.Dy(), cfg.Width, cfg.Height)
	}
	toHWC(img, dst)
	return nil
}

// toHWC copies img into dst, growing dst.Pix only when it is too small. The common
// decoder outputs have fast paths; anything else goes through the colour model.
func toHWC(img image.Image, dst *Image) {
	b := img.Bounds()
	h, w := b.Dy(), b.Dx()
	c := 3
	switch img.(type) {
	case *image.Gray, *image.Gray16:
		c = 1
	}
	dst.H, dst.W, dst.C = h, w, c
	dst.Pix = grow(dst.Pix, h*w*c)
	pix := dst.Pix

	switch src := img.(type) {
	case *image.Gray:
		for y := 0; y < h; y++ {
			row := src.Pix[y*src.Stride : y*src.Stride+w]
			copy(pix[y*w:], row)
		}
	case *image.YCbCr:
		ycbcrToRGB(src, pix)
	case *image.RGBA:
		rgbaToRGB(src.Pix, src.Stride, h, w, pix)
	case *image.NRGBA:
		// Non-premultiplied: dropping alpha keeps the colour as stored.
		rgbaToRGB(src.Pix, src.Stride, h, w, pix)
	default:
		anyToHWC(img, c, pix)
	}
}

// ycbcrToRGB converts a JPEG's YCbCr planes to RGB. Offsets are computed once per row;
// within a row, the chroma column is the luma column shifted by the horizontal
// subsampling (0 for 4:4:4 and 4:4:0, 1 for 4:2:2 and 4:2:0, 2 for 4:1:1 and 4:1:0).
func ycbcrToRGB(src *image.YCbCr, pix []byte) {
	shift := 0
	switch src.SubsampleRatio {
	case image.YCbCrSubsampleRatio422, image.YCbCrSubsampleRatio420:
		shift = 1
	case image.YCbCrSubsampleRatio411, image.YCbCrSubsampleRatio410:
		shift = 2
	}
	b := src.Rect
	w := b.Dx()
	i := 0
	for y := b.Min.Y; y < b.Max.Y; y++ {
		yRow := src.Y[src.YOffset(b.Min.X, y):][:w]
		c0 := src.COffset(b.Min.X, y)
		cLen := ((b.Max.X - 1) >> shift) - (b.Min.X >> shift) + 1
		cbRow, crRow := src.Cb[c0:][:cLen], src.Cr[c0:][:cLen]
		for x, yy := range yRow {
			c := ((b.Min.X + x) >> shift) - (b.Min.X >> shift)
			r, g, bl := color.YCbCrToRGB(yy, cbRow[c], crRow[c])
			pix[i], pix[i+1], pix[i+2] = r, g, bl
			i += 3
		}
	}
}

// rgbaToRGB copies 4-byte pixels to 3-byte pixels, dropping the fourth byte.
func rgbaToRGB(src []byte, stride, h, w int, pix []byte) {
	i := 0
	for y := 0; y < h; y++ {
		row := src[y*stride : y*stride+4*w]
		for x := 0; x < 4*w; x += 4 {
			pix[i], pix[i+1], pix[i+2] = row[x], row[x+1], row[x+2]
			i += 3
		}
	}
}

// anyToHWC converts through the colour model: slow, but right for every image type
// (16-bit, paletted, CMYK). Alpha is dropped from the non-premultiplied colour.
func anyToHWC(img image.Image, c int, pix []byte) {
	b := img.Bounds()
	i := 0
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			if c == 1 {
				g := color.GrayModel.Convert(img.At(x, y)).(color.Gray)
				pix[i] = g.Y
				i++
				continue
			}
			n := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
			pix[i], pix[i+1], pix[i+2] = n.R, n.G, n.B
			i += 3
		}
	}
}

// grow returns buf resized to n bytes, reusing its memory when it is large enough.
func grow(buf []byte, n int) []byte {
	if cap(buf) >= n {
		return buf[:n]
	}
	return make([]byte, n)
}
