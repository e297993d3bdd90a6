package datasets

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"strings"
	"testing"
)

// pattern returns a deterministic test colour for pixel (x, y).
func pattern(x, y int) color.NRGBA {
	return color.NRGBA{uint8(x * 37), uint8(y * 53), uint8(x*y + 11), 255}
}

// pngBytes encodes a w x h opaque RGB test image as PNG.
func pngBytes(t testing.TB, w, h int) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, pattern(x, y))
		}
	}
	return encodePNG(t, img)
}

func encodePNG(t testing.TB, img image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// pngHeaderOnly is a PNG signature and IHDR chunk declaring a side x side image of the
// given colour type (0 gray, 2 RGB) with no pixel data: what a decompression bomb
// shows image.DecodeConfig.
func pngHeaderOnly(side uint32, colorType byte) []byte {
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], side)
	binary.BigEndian.PutUint32(ihdr[4:], side)
	ihdr[8], ihdr[9] = 8, colorType
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	binary.Write(&b, binary.BigEndian, uint32(len(ihdr)))
	chunk := append([]byte("IHDR"), ihdr...)
	b.Write(chunk)
	binary.Write(&b, binary.BigEndian, crc32.ChecksumIEEE(chunk))
	return b.Bytes()
}

// TestDecodeImageTypes decodes each image type the decoders produce and compares with
// a conversion through the colour model (exact: both sides use the same decoder, so no
// tolerance is needed).
func TestDecodeImageTypes(t *testing.T) {
	const w, h = 7, 5
	gray := image.NewGray(image.Rect(0, 0, w, h))
	gray16 := image.NewGray16(image.Rect(0, 0, w, h))
	rgb := image.NewRGBA(image.Rect(0, 0, w, h))
	alpha := image.NewNRGBA(image.Rect(0, 0, w, h))
	rgb64 := image.NewNRGBA64(image.Rect(0, 0, w, h))
	pal := image.NewPaletted(image.Rect(0, 0, w, h),
		color.Palette{color.Black, color.RGBA{200, 10, 30, 255}, color.White})
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			c := pattern(x, y)
			gray.SetGray(x, y, color.Gray{c.R})
			gray16.SetGray16(x, y, color.Gray16{uint16(c.G)<<8 | 0x7f})
			rgb.Set(x, y, c)
			alpha.SetNRGBA(x, y, color.NRGBA{c.R, c.G, c.B, uint8(x * 30)})
			rgb64.SetNRGBA64(x, y, color.NRGBA64{uint16(c.R) << 8, uint16(c.G) << 8,
				uint16(c.B) << 8, 0xffff})
			pal.SetColorIndex(x, y, uint8((x+y)%3))
		}
	}
	var jpgRGB, jpgGray bytes.Buffer
	if err := jpeg.Encode(&jpgRGB, rgb, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	if err := jpeg.Encode(&jpgGray, gray, nil); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name  string
		data  []byte
		wantC int
		want  func(x, y int) []byte
	}{
		{"png gray", encodePNG(t, gray), 1, func(x, y int) []byte {
			return []byte{pattern(x, y).R}
		}},
		{"png gray16 keeps the high byte", encodePNG(t, gray16), 1, func(x, y int) []byte {
			return []byte{pattern(x, y).G}
		}},
		{"png rgb", encodePNG(t, rgb), 3, func(x, y int) []byte {
			c := pattern(x, y)
			return []byte{c.R, c.G, c.B}
		}},
		{"png alpha is dropped, colour kept", encodePNG(t, alpha), 3,
			func(x, y int) []byte {
				c := pattern(x, y) // even where alpha is 0
				return []byte{c.R, c.G, c.B}
			}},
		{"png 16-bit", encodePNG(t, rgb64), 3, func(x, y int) []byte {
			c := pattern(x, y)
			return []byte{c.R, c.G, c.B}
		}},
		{"png paletted", encodePNG(t, pal), 3, func(x, y int) []byte {
			r, g, b, _ := pal.Palette[(x+y)%3].RGBA()
			return []byte{byte(r >> 8), byte(g >> 8), byte(b >> 8)}
		}},
		{"jpeg gray", jpgGray.Bytes(), 1, nil},
		{"jpeg rgb", jpgRGB.Bytes(), 3, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var img Image
			if err := decodeImage(c.data, 64, &img); err != nil {
				t.Fatal(err)
			}
			if img.H != h || img.W != w || img.C != c.wantC || len(img.Pix) != h*w*c.wantC {
				t.Fatalf("got %dx%dx%d with %d bytes, want %dx%dx%d", img.H, img.W, img.C,
					len(img.Pix), h, w, c.wantC)
			}
			want := c.want
			if want == nil { // JPEG: the reference is image/jpeg through the colour model
				ref, _ := jpeg.Decode(bytes.NewReader(c.data))
				want = func(x, y int) []byte {
					if c.wantC == 1 {
						return []byte{color.GrayModel.Convert(ref.At(x, y)).(color.Gray).Y}
					}
					r, g, b, _ := ref.At(x, y).RGBA()
					return []byte{byte(r >> 8), byte(g >> 8), byte(b >> 8)}
				}
			}
			for y := 0; y < h; y++ {
				for x := 0; x < w; x++ {
					i := (y*w + x) * c.wantC
					if got := img.Pix[i : i+c.wantC]; !bytes.Equal(got, want(x, y)) {
						t.Fatalf("pixel (%d,%d) = %v, want %v", x, y, got, want(x, y))
					}
				}
			}
		})
	}
}

// TestDecodeImageRejects: formats other than JPEG and PNG, garbage, empty input and
// images whose header exceeds the side limit are errors, never panics.
func TestDecodeImageRejects(t *testing.T) {
	var gifData bytes.Buffer
	gif.Encode(&gifData, image.NewPaletted(image.Rect(0, 0, 2, 2), color.Palette{color.Black}),
		nil)
	cases := []struct {
		name, want string
		data       []byte
	}{
		{"gif", `"gif": want JPEG or PNG`, gifData.Bytes()},
		{"garbage", "read image header", []byte("not an image at all")},
		{"empty", "read image header", nil},
		{"bomb", "100000x100000 exceeds the 4096-pixel limit", pngHeaderOnly(100000, 2)},
		{"header only", "decode png", pngHeaderOnly(16, 0)},
	}
	for _, c := range cases {
		var img Image
		err := decodeImage(c.data, 4096, &img)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
}

// TestDecodeImageReusesMemory: a buffer that is large enough is written in place.
func TestDecodeImageReusesMemory(t *testing.T) {
	img := Image{Pix: make([]byte, 0, 1000)}
	before := &img.Pix[:1][0]
	if err := decodeImage(pngBytes(t, 8, 8), 64, &img); err != nil {
		t.Fatal(err)
	}
	if &img.Pix[0] != before || len(img.Pix) != 8*8*3 {
		t.Fatalf("decode allocated a new buffer (len %d) though capacity sufficed",
			len(img.Pix))
	}
}

// FuzzDecodeImage: any bytes either decode to a consistent image or give an error.
func FuzzDecodeImage(f *testing.F) {
	f.Add(pngBytes(f, 3, 4))
	f.Add(pngHeaderOnly(1<<30, 2))
	var j bytes.Buffer
	jpeg.Encode(&j, image.NewGray(image.Rect(0, 0, 9, 3)), nil)
	f.Add(j.Bytes())
	f.Add([]byte("\xff\xd8\xff\xe0"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var img Image
		if err := decodeImage(data, 512, &img); err != nil {
			return
		}
		if img.H < 1 || img.W < 1 || img.H > 512 || img.W > 512 ||
			(img.C != 1 && img.C != 3) || len(img.Pix) != img.H*img.W*img.C {
			t.Fatalf("inconsistent image %dx%dx%d with %d bytes", img.H, img.W, img.C,
				len(img.Pix))
		}
	})
}
