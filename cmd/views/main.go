// Command views shows what an augmentation recipe does: it draws the M
// views of a few images and writes them as a PNG grid, one row per image
// (the source first, then its views), undoing the normalisation so the
// colours are the ones the encoder sees.
//
//	go run ./cmd/views -recipe simclr -views 4 -out views.png
//	go run ./cmd/views -data ~/imagenet/val -recipe multicrop -out mc.png
//
// -data is a WebDataset shard (.tar of .jpg/.png + .cls), a folder of
// shards, or a folder of images (searched recursively, as ImageFolder); by
// default the CIFAR-10 shards in ../shared/data/cifar10.
package main

import (
	"archive/tar"
	"errors"
	"flag"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	_ "image/jpeg"
	"image/png"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/polyview/polyview/bindings"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "views:", err)
		os.Exit(1)
	}
}

type options struct {
	data, recipe, device, out  string
	images, views, size, scale int
	seed, epoch                uint64
	params                     bool
}

func run(args []string) error {
	var o options
	fs := flag.NewFlagSet("views", flag.ContinueOnError)
	fs.StringVar(&o.data, "data", filepath.Join("..", "shared", "data", "cifar10"),
		"WebDataset shard, folder of shards, or folder of images")
	fs.StringVar(&o.recipe, "recipe", "simclr", "simclr, simclr-cifar, byol, multicrop or identity")
	fs.IntVar(&o.images, "images", 4, "images to show")
	fs.IntVar(&o.views, "views", 4, "views per image (simclr, simclr-cifar, identity)")
	fs.IntVar(&o.size, "size", 0, "output size; 0: 32 for 32 x 32 sources, else 224")
	fs.IntVar(&o.scale, "scale", 0, "display zoom; 0: enough for 128-pixel cells")
	fs.Uint64Var(&o.seed, "seed", 1, "seed of the views")
	fs.Uint64Var(&o.epoch, "epoch", 0, "epoch of the views")
	fs.StringVar(&o.device, "device", "cpu", "device: cpu, cuda or auto")
	fs.StringVar(&o.out, "out", "views.png", "PNG to write")
	fs.BoolVar(&o.params, "params", false, "print every view's drawn parameters")
	if err := fs.Parse(args); err != nil {
		return err
	}
	images, err := loadImages(o.data, o.images)
	if err != nil {
		return err
	}
	if o.size == 0 {
		o.size = 224
		if images[0].Height <= 32 && images[0].Width <= 32 {
			o.size = 32
		}
	}
	recipes, err := recipesFor(o.recipe, o.size, o.views)
	if err != nil {
		return err
	}

	dev, err := bindings.Open(o.device, nil)
	if err != nil {
		return err
	}
	defer dev.Close()
	batch, err := bindings.NewImageBatch(dev, images)
	if err != nil {
		return err
	}
	defer batch.Close()
	groups, err := bindings.Augment(batch, recipes, o.seed, o.epoch, bindings.Float32)
	if err != nil {
		return err
	}
	views := make([][]image.Image, len(images)) // [image][view]
	for _, g := range groups {
		if err := collect(g, recipes, views); err != nil {
			return err
		}
		g.Close()
	}
	if o.params {
		printParams(images, recipes, o)
	}
	if err := writeGrid(o.out, images, views, o.scale); err != nil {
		return err
	}
	fmt.Printf("views: %d images x %d views (%s, seed %d, epoch %d) -> %s\n", len(images),
		len(recipes), o.recipe, o.seed, o.epoch, o.out)
	return nil
}

func recipesFor(name string, size, m int) ([]bindings.Recipe, error) {
	switch name {
	case "simclr":
		return bindings.Repeat(bindings.SimCLRRecipe(size), m), nil
	case "simclr-cifar":
		return bindings.Repeat(bindings.SimCLRCIFARRecipe(size), m), nil
	case "byol":
		return bindings.BYOLRecipes(size), nil
	case "multicrop":
		return bindings.MultiCropRecipes(2, size, 6, size*3/7), nil
	case "identity":
		return bindings.Repeat(bindings.IdentityRecipe(size, size), m), nil
	}
	return nil, fmt.Errorf("unknown recipe %q (want simclr, simclr-cifar, byol, multicrop "+
		"or identity)", name)
}

// collect turns a group's views back into 8-bit images, undoing each
// recipe's normalisation.
func collect(g bindings.ViewGroup, recipes []bindings.Recipe, views [][]image.Image) error {
	data, err := g.Views.Float32()
	if err != nil {
		return err
	}
	per := g.Height * g.Width * 3
	for i := range views {
		for a := 0; a < g.Count; a++ {
			r := recipes[g.First+a]
			img := image.NewRGBA(image.Rect(0, 0, g.Width, g.Height))
			v := data[(i*g.Count+a)*per:]
			for q := 0; q < g.Height*g.Width; q++ {
				var px [3]uint8
				for c := 0; c < 3; c++ {
					x := float64(v[3*q+c])*r.Std[c] + r.Mean[c]
					px[c] = uint8(min(255, max(0, x*255+0.5)))
				}
				img.Set(q%g.Width, q/g.Width, color.RGBA{px[0], px[1], px[2], 255})
			}
			views[i] = append(views[i], img)
		}
	}
	return nil
}

// writeGrid draws one row per image: the source, then its views, each in
// a square cell zoomed by nearest neighbour.
func writeGrid(path string, images []bindings.Image, views [][]image.Image, scale int) error {
	largest := 0
	for _, row := range views {
		for _, v := range row {
			largest = max(largest, v.Bounds().Dx(), v.Bounds().Dy())
		}
	}
	if scale <= 0 {
		scale = max(1, (128+largest-1)/largest)
	}
	const pad = 6
	cell := largest * scale
	cols := len(views[0]) + 1
	grid := image.NewRGBA(image.Rect(0, 0, cols*(cell+pad)+pad, len(images)*(cell+pad)+pad))
	draw.Draw(grid, grid.Bounds(), image.NewUniform(color.RGBA{40, 40, 40, 255}), image.Point{},
		draw.Src)
	for i, im := range images {
		y := pad + i*(cell+pad)
		src := toRGBA(im)
		// The source fits its cell whatever its size.
		zoom := float64(cell) / float64(max(im.Width, im.Height))
		paste(grid, src, pad, y, zoom)
		for a, v := range views[i] {
			paste(grid, v, pad+(a+1)*(cell+pad), y, float64(scale))
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, grid); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func paste(dst *image.RGBA, src image.Image, x0, y0 int, zoom float64) {
	b := src.Bounds()
	w, h := int(float64(b.Dx())*zoom), int(float64(b.Dy())*zoom)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			dst.Set(x0+x, y0+y, src.At(b.Min.X+int(float64(x)/zoom), b.Min.Y+int(float64(y)/zoom)))
		}
	}
}

func toRGBA(im bindings.Image) image.Image {
	img := image.NewRGBA(image.Rect(0, 0, im.Width, im.Height))
	for q := 0; q < im.Width*im.Height; q++ {
		p := im.Pix[q*im.Channels:]
		c := color.RGBA{p[0], p[0], p[0], 255}
		if im.Channels == 3 {
			c.G, c.B = p[1], p[2]
		}
		img.Set(q%im.Width, q/im.Width, c)
	}
	return img
}

func printParams(images []bindings.Image, recipes []bindings.Recipe, o options) {
	for i, im := range images {
		for m, r := range recipes {
			p, err := bindings.SampleView(r, o.seed, o.epoch, im.Index, m, im.Height, im.Width)
			if err != nil {
				fmt.Printf("image %d view %d: %v\n", i, m, err)
				continue
			}
			fmt.Printf("image %d view %d: crop %dx%d at (%d,%d) flip=%v jitter=%v "+
				"b=%.2f c=%.2f s=%.2f h=%+.3f gray=%v blur=%v(sigma %.2f, %d taps) solarize=%v\n",
				i, m, p.CropH, p.CropW, p.CropY, p.CropX, p.Flip, p.Order, p.Brightness,
				p.Contrast, p.Saturation, p.Hue, p.Gray, p.Blur, p.BlurSigma, p.BlurKernel,
				p.Solarize)
		}
	}
}

// ---- reading images ----------------------------------------------------------

var imageExts = map[string]bool{".jpg": true, ".jpeg": true, ".png": true}

// loadImages reads the first n images of a shard, a folder of shards or a
// folder of images, in name order; Index is the position in that order.
func loadImages(path string, n int) ([]bindings.Image, error) {
	if n < 1 {
		return nil, fmt.Errorf("-images %d: want at least 1", n)
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	var out []bindings.Image
	add := func(name string, r io.Reader) error {
		im, err := decode(r)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		im.Index = int64(len(out))
		out = append(out, im)
		return nil
	}
	if !st.IsDir() {
		return out, readShard(path, n, add)
	}
	var files, shards []string
	err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		switch ext := strings.ToLower(filepath.Ext(p)); {
		case ext == ".tar":
			shards = append(shards, p)
		case imageExts[ext]:
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(shards)
	sort.Strings(files)
	for _, s := range shards {
		if len(out) >= n {
			break
		}
		if err := readShard(s, n-len(out), add); err != nil {
			return nil, err
		}
	}
	for _, p := range files {
		if len(out) >= n {
			break
		}
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		err = add(p, f)
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no .jpg, .png or .tar files", path)
	}
	return out, nil
}

// readShard decodes up to n images of a WebDataset tar shard.
func readShard(path string, n int, add func(string, io.Reader) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for added := 0; added < n; {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if !imageExts[strings.ToLower(filepath.Ext(h.Name))] {
			continue
		}
		if err := add(path+":"+h.Name, tr); err != nil {
			return err
		}
		added++
	}
	return nil
}

// decode turns a JPEG or PNG into RGB bytes (gray images stay one channel).
func decode(r io.Reader) (bindings.Image, error) {
	img, _, err := image.Decode(r)
	if err != nil {
		return bindings.Image{}, err
	}
	b := img.Bounds()
	im := bindings.Image{Height: b.Dy(), Width: b.Dx(), Channels: 3}
	if g, ok := img.(*image.Gray); ok {
		im.Channels = 1
		for y := 0; y < im.Height; y++ {
			im.Pix = append(im.Pix, g.Pix[y*g.Stride:y*g.Stride+im.Width]...)
		}
		return im, nil
	}
	im.Pix = make([]byte, 0, im.Height*im.Width*3)
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			c := color.RGBAModel.Convert(img.At(x, y)).(color.RGBA)
			im.Pix = append(im.Pix, c.R, c.G, c.B)
		}
	}
	return im, nil
}
