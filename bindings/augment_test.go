package bindings

import (
	"errors"
	"math"
	"math/rand"
	"reflect"
	"strings"
	"testing"
)

// testImage is a deterministic h x w x c image: smooth ramps plus noise,
// so that bilinear weights, flips and crops all show in the pixels.
func testImage(h, w, c int, seed int64, index int64) Image {
	rng := rand.New(rand.NewSource(seed))
	pix := make([]byte, h*w*c)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			for k := 0; k < c; k++ {
				v := 40 + 150*float64(x)/float64(w) + 50*float64(y*(k+1)%h)/float64(h)
				pix[(y*w+x)*c+k] = byte(math.Min(255, v+float64(rng.Intn(16))))
			}
		}
	}
	return Image{Pix: pix, Height: h, Width: w, Channels: c, Index: index}
}

// runViews augments images with recipes (one size) on dev and returns the
// views as float64, [N][views][oh*ow*3].
func runViews(t testing.TB, dev *Device, images []Image, recipes []Recipe, first int,
	seed, epoch uint64, dtype DType) [][][]float64 {
	t.Helper()
	b, err := NewImageBatch(dev, images)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r := recipes[0]
	out, err := dev.NewTensor(dtype, len(images), len(recipes), r.Height, r.Width, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if err := AugmentInto(b, recipes, first, seed, epoch, out); err != nil {
		t.Fatal(err)
	}
	flat, err := out.Float64()
	if err != nil {
		t.Fatal(err)
	}
	per := r.Height * r.Width * 3
	views := make([][][]float64, len(images))
	for i := range views {
		for a := range recipes {
			at := (i*len(recipes) + a) * per
			views[i] = append(views[i], flat[at:at+per])
		}
	}
	return views
}

// ---- a float64 reference of one view, from its drawn parameters --------

// refTaps mirrors pv_bilinear_taps in float32, each step rounded (Go
// does not fuse float32 operations that are converted explicitly).
func refTaps(d, crop, out int) (i0, i1 int, frac float64) {
	scale := float32(crop) / float32(out)
	s := float32(float32(float32(d)+0.5)*scale) - 0.5
	if s < 0 {
		s = 0
	}
	i0 = int(s)
	if i0 > crop-1 {
		i0 = crop - 1
	}
	i1 = i0 + 1
	if i1 > crop-1 {
		i1 = crop - 1
	}
	return i0, i1, float64(s - float32(i0))
}

// refResize is the crop of p resized to oh x ow (bilinear, half-pixel
// centres), flipped when p.Flip, in [0, 1]: [oh*ow*3].
func refResize(im Image, p ViewParams, oh, ow int) []float64 {
	out := make([]float64, oh*ow*3)
	at := func(y, x, k int) float64 {
		if im.Channels == 1 {
			k = 0
		}
		return float64(im.Pix[((p.CropY+y)*im.Width+p.CropX+x)*im.Channels+k])
	}
	for y := 0; y < oh; y++ {
		y0, y1, fy := refTaps(y, p.CropH, oh)
		for x := 0; x < ow; x++ {
			xs := x
			if p.Flip {
				xs = ow - 1 - x
			}
			x0, x1, fx := refTaps(xs, p.CropW, ow)
			for k := 0; k < 3; k++ {
				top := (1-fx)*at(y0, x0, k) + fx*at(y0, x1, k)
				bot := (1-fx)*at(y1, x0, k) + fx*at(y1, x1, k)
				out[(y*ow+x)*3+k] = ((1-fy)*top + fy*bot) / 255
			}
		}
	}
	return out
}

func clamp01(x float64) float64 { return math.Min(1, math.Max(0, x)) }

func luma(r, g, b float64) float64 { return 0.2989*r + 0.587*g + 0.114*b }

// refHue is torchvision's adjust_hue on one pixel: RGB -> HSV, shift,
// HSV -> RGB.
func refHue(r, g, b, shift float64) (float64, float64, float64) {
	maxc := math.Max(r, math.Max(g, b))
	minc := math.Min(r, math.Min(g, b))
	cr := maxc - minc
	s, crd := 0.0, 1.0
	if maxc != minc {
		s, crd = cr/maxc, cr
	}
	rc, gc, bc := (maxc-r)/crd, (maxc-g)/crd, (maxc-b)/crd
	var h float64
	switch {
	case maxc == r:
		h = bc - gc
	case maxc == g:
		h = 2 + rc - bc
	default:
		h = 4 + gc - rc
	}
	h = math.Mod(h/6+1, 1)
	h = h + shift
	h -= math.Floor(h)
	i := math.Floor(h * 6)
	f := h*6 - i
	v := maxc
	p := clamp01(v * (1 - s))
	q := clamp01(v * (1 - s*f))
	t := clamp01(v * (1 - s*(1-f)))
	switch int(i) % 6 {
	case 0:
		return v, t, p
	case 1:
		return q, v, p
	case 2:
		return p, v, t
	case 3:
		return p, q, v
	case 4:
		return t, p, v
	}
	return v, p, q
}

// refBlur blurs planes of [oh*ow*3] with the full Gaussian of p, borders
// reflected, horizontal then vertical.
func refBlur(img []float64, oh, ow int, p ViewParams) []float64 {
	half := (p.BlurKernel - 1) / 2
	w := make([]float64, p.BlurKernel)
	sum := 0.0
	for k := range w {
		x := float64(k-half) / float64(p.BlurSigma)
		w[k] = math.Exp(-0.5 * x * x)
		sum += w[k]
	}
	reflect := func(j, n int) int {
		if n == 1 {
			return 0
		}
		period := 2 * (n - 1)
		j %= period
		if j < 0 {
			j += period
		}
		if j < n {
			return j
		}
		return period - j
	}
	tmp := make([]float64, len(img))
	out := make([]float64, len(img))
	for y := 0; y < oh; y++ {
		for x := 0; x < ow; x++ {
			for c := 0; c < 3; c++ {
				acc := 0.0
				for k := range w {
					acc += w[k] / sum * img[(y*ow+reflect(x+k-half, ow))*3+c]
				}
				tmp[(y*ow+x)*3+c] = acc
			}
		}
	}
	for y := 0; y < oh; y++ {
		for x := 0; x < ow; x++ {
			for c := 0; c < 3; c++ {
				acc := 0.0
				for k := range w {
					acc += w[k] / sum * tmp[(reflect(y+k-half, oh)*ow+x)*3+c]
				}
				out[(y*ow+x)*3+c] = acc
			}
		}
	}
	return out
}

// refView is the whole view in float64. near marks values within 1e-4 of
// the solarisation threshold, where float32 rounding may fall on either
// side of it.
func refView(im Image, r Recipe, p ViewParams) (out []float64, near []bool) {
	oh, ow := r.Height, r.Width
	v := refResize(im, p, oh, ow)
	for _, op := range p.Order {
		mean := 0.0
		for q := 0; q < oh*ow; q++ {
			mean += luma(v[3*q], v[3*q+1], v[3*q+2])
		}
		mean /= float64(oh * ow)
		for q := 0; q < oh*ow; q++ {
			px := v[3*q : 3*q+3]
			switch op {
			case JitterBrightness:
				for k := range px {
					px[k] = clamp01(float64(p.Brightness) * px[k])
				}
			case JitterContrast:
				f := float64(p.Contrast)
				for k := range px {
					px[k] = clamp01(f*px[k] + (1-f)*mean)
				}
			case JitterSaturation:
				f, l := float64(p.Saturation), luma(px[0], px[1], px[2])
				for k := range px {
					px[k] = clamp01(f*px[k] + (1-f)*l)
				}
			case JitterHue:
				px[0], px[1], px[2] = refHue(px[0], px[1], px[2], float64(p.Hue))
			}
		}
	}
	if p.Gray {
		for q := 0; q < oh*ow; q++ {
			l := luma(v[3*q], v[3*q+1], v[3*q+2])
			v[3*q], v[3*q+1], v[3*q+2] = l, l, l
		}
	}
	if p.Blur {
		v = refBlur(v, oh, ow, p)
	}
	near = make([]bool, len(v))
	for k := range v {
		if p.Solarize {
			th := float64(p.SolarizeThreshold)
			near[k] = math.Abs(v[k]-th) < 1e-4
			if v[k] >= th {
				v[k] = 1 - v[k]
			}
		}
		v[k] = (v[k] - r.Mean[k%3]) / r.Std[k%3]
	}
	return v, near
}

// compareView reports the largest |got - want| outside near, and fails
// the test above tol.
func compareView(t *testing.T, what string, got, want []float64, near []bool, tol float64) {
	t.Helper()
	worst, at := 0.0, -1
	for k := range want {
		if near != nil && near[k] {
			continue
		}
		if d := math.Abs(got[k] - want[k]); d > worst || math.IsNaN(d) {
			worst, at = d, k
		}
	}
	if worst > tol || math.IsNaN(worst) {
		t.Errorf("%s: value %d (pixel %d, channel %d) = %.7f, want %.7f (|diff| %.2g > %.2g)",
			what, at, at/3, at%3, got[at], want[at], worst, tol)
	}
}

// ---- tests ---------------------------------------------------------------

// TestAugmentPhiloxKnownAnswers checks the generator against Random123's
// published known-answer vectors (its tests/kat_vectors).
func TestAugmentPhiloxKnownAnswers(t *testing.T) {
	cases := []struct {
		ctr  [4]uint32
		key  [2]uint32
		want [4]uint32
	}{
		{[4]uint32{}, [2]uint32{}, [4]uint32{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
		{[4]uint32{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
			[2]uint32{0xffffffff, 0xffffffff},
			[4]uint32{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
		{[4]uint32{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
			[2]uint32{0xa4093822, 0x299f31d0},
			[4]uint32{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
	}
	for _, c := range cases {
		if got := Philox4x32(c.ctr, c.key); got != c.want {
			t.Errorf("philox(%08x, %08x) = %08x, want %08x", c.ctr, c.key, got, c.want)
		}
	}
}

// TestAugmentParamsDeterministic: one key gives one set of parameters;
// another epoch, view or image gives other crops.
func TestAugmentParamsDeterministic(t *testing.T) {
	r := SimCLRRecipe(224)
	const n = 64
	same := map[string]int{}
	for i := int64(0); i < n; i++ {
		p0, err := SampleView(r, 7, 3, i, 1, 375, 500)
		if err != nil {
			t.Fatal(err)
		}
		again, _ := SampleView(r, 7, 3, i, 1, 375, 500)
		if !sameParams(p0, again) {
			t.Fatalf("image %d: two draws of one key differ: %+v vs %+v", i, p0, again)
		}
		others := map[string]ViewParams{}
		others["epoch"], _ = SampleView(r, 7, 4, i, 1, 375, 500)
		others["seed"], _ = SampleView(r, 8, 3, i, 1, 375, 500)
		others["view"], _ = SampleView(r, 7, 3, i, 0, 375, 500)
		others["image"], _ = SampleView(r, 7, 3, i+n, 1, 375, 500)
		for what, p := range others {
			if p.CropY == p0.CropY && p.CropX == p0.CropX && p.CropH == p0.CropH {
				same[what]++
			}
		}
	}
	// Two independent SimCLR crops of a 375 x 500 image share a box with
	// probability far below 1/64; allow one coincidence per key field.
	for what, k := range same {
		if k > 1 {
			t.Errorf("another %s gave the same crop box for %d of %d images", what, k, n)
		}
	}
}

func sameParams(a, b ViewParams) bool { return reflect.DeepEqual(a, b) }

// TestAugmentParamsDistribution checks the SimCLR recipe's draws against
// its ranges and probabilities over 4000 views. The tolerances on rates
// are 5 binomial standard deviations (at most 0.04 for p = 0.5).
func TestAugmentParamsDistribution(t *testing.T) {
	r := SimCLRRecipe(224)
	const n, h, w = 4000, 375, 500
	counts := map[string]float64{}
	for i := 0; i < n; i++ {
		p, err := SampleView(r, 1, 0, int64(i), 0, h, w)
		if err != nil {
			t.Fatal(err)
		}
		if p.CropY < 0 || p.CropX < 0 || p.CropY+p.CropH > h || p.CropX+p.CropW > w {
			t.Fatalf("view %d: crop %+v outside the %dx%d image", i, p, h, w)
		}
		// Rounding w and h to integers moves area and aspect by at most
		// about 1/sqrt(0.08 * area) relative: 1% here, so allow 3%.
		area := float64(p.CropH*p.CropW) / (h * w)
		aspect := float64(p.CropW) / float64(p.CropH)
		if area < 0.08*0.97 || area > 1 || aspect < 0.75*0.97 || aspect > 4.0/3*1.03 {
			t.Fatalf("view %d: crop %dx%d has area %.3f, aspect %.3f", i, p.CropH, p.CropW,
				area, aspect)
		}
		counts["flip"] += b2f(p.Flip)
		counts["gray"] += b2f(p.Gray)
		counts["blur"] += b2f(p.Blur)
		counts["jitter"] += b2f(len(p.Order) > 0)
		if p.Blur && (p.BlurSigma < 0.1 || p.BlurSigma > 2 || p.BlurKernel != 23) {
			t.Fatalf("view %d: blur sigma %g kernel %d", i, p.BlurSigma, p.BlurKernel)
		}
		if len(p.Order) > 0 {
			if p.Brightness < 0.2 || p.Brightness > 1.8 || p.Hue < -0.2 || p.Hue > 0.2 {
				t.Fatalf("view %d: factors %+v", i, p)
			}
			counts["contrast first"] += b2f(p.Order[0] == JitterContrast)
		}
	}
	want := map[string]float64{"flip": 0.5, "gray": 0.2, "blur": 0.5, "jitter": 0.8,
		"contrast first": 0.8 * 0.25}
	for k, p := range want {
		tol := 5 * math.Sqrt(p*(1-p)/n)
		if got := counts[k] / n; math.Abs(got-p) > tol {
			t.Errorf("%s rate %.3f, want %.3f +- %.3f", k, got, p, tol)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// TestAugmentOps checks each op on the CPU against the float64 reference
// built from the drawn parameters. The CPU computes in float32: each op
// adds a few ulp of 1 (6e-8) and normalisation divides by std >= 0.2, so
// 2e-5 bounds the error with room; the blur and hue cases sum more terms
// and divide by small differences, and are held to 1e-4.
func TestAugmentOps(t *testing.T) {
	dev := cpuDevice(t)
	base := IdentityRecipe(24, 20)
	with := func(f func(r *Recipe)) Recipe {
		r := base
		f(&r)
		return r
	}
	cases := []struct {
		name   string
		recipe Recipe
		tol    float64
	}{
		{"identity upsample", base, 2e-5},
		{"identity downsample", with(func(r *Recipe) { r.Height, r.Width = 9, 7 }), 2e-5},
		{"flip", with(func(r *Recipe) { r.FlipP = 1 }), 2e-5},
		{"crop", with(func(r *Recipe) {
			r.ScaleMin, r.ScaleMax, r.RatioMin, r.RatioMax = 0.1, 0.5, 0.5, 2
		}), 2e-5},
		{"brightness", with(func(r *Recipe) { r.JitterP, r.Brightness = 1, 0.8 }), 2e-5},
		{"contrast", with(func(r *Recipe) { r.JitterP, r.Contrast = 1, 0.8 }), 2e-5},
		{"saturation", with(func(r *Recipe) { r.JitterP, r.Saturation = 1, 0.8 }), 2e-5},
		{"hue", with(func(r *Recipe) { r.JitterP, r.Hue = 1, 0.5 }), 1e-4},
		{"grayscale", with(func(r *Recipe) { r.GrayP = 1 }), 2e-5},
		{"blur", with(func(r *Recipe) {
			r.BlurP, r.BlurSigmaMin, r.BlurSigmaMax = 1, 0.5, 2
		}), 1e-4},
		{"solarize", with(func(r *Recipe) { r.SolarizeP, r.SolarizeThreshold = 1, 0.6 }), 2e-5},
		{"normalize", with(func(r *Recipe) { r.Mean, r.Std = ImageNetMean, ImageNetStd }), 2e-5},
		{"simclr", with(func(r *Recipe) {
			*r = SimCLRRecipe(32)
			r.BlurKernel = 5
		}), 2e-4},
		{"byol second", with(func(r *Recipe) {
			*r = BYOLRecipes(28)[1]
			r.BlurP, r.SolarizeP = 0.5, 0.5
		}), 2e-4},
	}
	images := []Image{testImage(30, 40, 3, 1, 0), testImage(17, 23, 1, 2, 1),
		testImage(40, 30, 3, 3, 2)}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			const views = 6
			recipes := Repeat(c.recipe, views)
			got := runViews(t, dev, images, recipes, 0, 11, 2, Float32)
			for i, im := range images {
				for a := 0; a < views; a++ {
					p, err := SampleView(c.recipe, 11, 2, im.Index, a, im.Height, im.Width)
					if err != nil {
						t.Fatal(err)
					}
					want, near := refView(im, c.recipe, p)
					compareView(t, c.name, got[i][a], want, near, c.tol)
				}
			}
		})
	}
}

// TestAugmentHandValues pins the ops to numbers worked out by hand on a
// 1 x 2 image, so the reference above is not the only judge.
func TestAugmentHandValues(t *testing.T) {
	dev := cpuDevice(t)
	im := Image{Pix: []byte{255, 0, 51, 102, 204, 0}, Height: 1, Width: 2, Channels: 3}
	id := IdentityRecipe(1, 2)
	cases := []struct {
		name string
		f    func(r *Recipe)
		want []float64
	}{
		{"identity", func(r *Recipe) {}, []float64{1, 0, 0.2, 0.4, 0.8, 0}},
		{"flip", func(r *Recipe) { r.FlipP = 1 }, []float64{0.4, 0.8, 0, 1, 0, 0.2}},
		// 0.2989 + 0.114 * 0.2 = 0.3217; 0.2989 * 0.4 + 0.587 * 0.8 = 0.58916.
		{"grayscale", func(r *Recipe) { r.GrayP = 1 },
			[]float64{0.3217, 0.3217, 0.3217, 0.58916, 0.58916, 0.58916}},
		// x >= 0.5 becomes 1 - x.
		{"solarize", func(r *Recipe) { r.SolarizeP, r.SolarizeThreshold = 1, 0.5 },
			[]float64{0, 0, 0.2, 0.4, 0.2, 0}},
		// (x - 0.5) / 0.25.
		{"normalize", func(r *Recipe) {
			r.Mean, r.Std = [3]float64{0.5, 0.5, 0.5}, [3]float64{0.25, 0.25, 0.25}
		}, []float64{2, -2, -1.2, -0.4, 1.2, -2}},
		// Upsampled to 1 x 4: source x = (d + 0.5) / 2 - 0.5 = -0.25 (clamped
		// to 0), 0.25, 0.75, 1.25 (high tap clamped): weights 0, .25, .75, 1.
		{"bilinear", func(r *Recipe) { r.Width = 4 }, []float64{1, 0, 0.2, 0.85, 0.2, 0.15,
			0.55, 0.6, 0.05, 0.4, 0.8, 0}},
	}
	for _, c := range cases {
		r := id
		c.f(&r)
		got := runViews(t, dev, []Image{im}, []Recipe{r}, 0, 1, 0, Float32)[0][0]
		// float32 values of these numbers: 1e-6 is a few ulp.
		compareView(t, c.name, got, c.want, nil, 1e-6)
	}
}

// TestAugmentGrayInput: a one-channel image gives the same views as the
// RGB image with R = G = B.
func TestAugmentGrayInput(t *testing.T) {
	dev := cpuDevice(t)
	g := testImage(20, 26, 1, 5, 3)
	rgb := Image{Height: 20, Width: 26, Channels: 3, Index: 3}
	for _, v := range g.Pix {
		rgb.Pix = append(rgb.Pix, v, v, v)
	}
	recipes := Repeat(SimCLRRecipe(16), 4)
	a := runViews(t, dev, []Image{g}, recipes, 0, 9, 1, Float32)
	b := runViews(t, dev, []Image{rgb}, recipes, 0, 9, 1, Float32)
	for v := range recipes {
		// Same input values, same code path after the samples: bit-identical.
		compareView(t, "gray vs rgb", a[0][v], b[0][v], nil, 0)
	}
}

// TestAugmentBatchSplit: a view depends on (seed, epoch, image index,
// view) only, not on the batch it arrives in, its position there, the
// thread count or the group split of the recipes.
func TestAugmentBatchSplit(t *testing.T) {
	dev := cpuDevice(t)
	var images []Image
	for i := 0; i < 7; i++ {
		images = append(images, testImage(30+5*i, 44-3*i, 1+2*(i%2), int64(i), int64(1000+i)))
	}
	recipes := BYOLRecipes(20)
	recipes = append(recipes, SimCLRRecipe(20))
	whole := runViews(t, dev, images, recipes, 0, 5, 9, Float32)

	defer SetCPUThreads(CPUThreads())
	if err := SetCPUThreads(1); err != nil {
		t.Fatal(err)
	}
	reversed := make([]Image, len(images))
	for i := range images {
		reversed[len(images)-1-i] = images[i]
	}
	rev := runViews(t, dev, reversed, recipes, 0, 5, 9, Float32)
	head := runViews(t, dev, images[:3], recipes[:1], 0, 5, 9, Float32)
	tail := runViews(t, dev, images[3:], recipes[1:], 1, 5, 9, Float32)
	for i := range images {
		for a := range recipes {
			compareView(t, "reversed batch, 1 thread", rev[len(images)-1-i][a], whole[i][a], nil, 0)
		}
	}
	for i := 0; i < 3; i++ {
		compareView(t, "first 3 images, view 0", head[i][0], whole[i][0], nil, 0)
	}
	for i := 3; i < len(images); i++ {
		for a := 1; a < len(recipes); a++ {
			compareView(t, "last 4 images, views 1-2", tail[i-3][a-1], whole[i][a], nil, 0)
		}
	}
	other := runViews(t, dev, images[:1], recipes[:1], 0, 5, 10, Float32)
	if maxDiff(other[0][0], whole[0][0]) == 0 {
		t.Error("epoch 10 gave the same view as epoch 9")
	}
}

func maxDiff(a, b []float64) float64 {
	m := 0.0
	for k := range a {
		m = math.Max(m, math.Abs(a[k]-b[k]))
	}
	return m
}

// TestAugmentBFloat16 checks that bfloat16 views are the float32 views
// rounded: within half a bf16 ulp, 2^-8 of the value at most (bf16 keeps
// 8 significant bits; half an ulp of 1.0 is 2^-8, of 1.99 still 2^-8).
func TestAugmentBFloat16(t *testing.T) {
	dev := cpuDevice(t)
	images := []Image{testImage(33, 41, 3, 4, 0)}
	recipes := Repeat(SimCLRRecipe(24), 3)
	f := runViews(t, dev, images, recipes, 0, 3, 0, Float32)
	h := runViews(t, dev, images, recipes, 0, 3, 0, BFloat16)
	for a := range recipes {
		for k, v := range f[0][a] {
			if d := math.Abs(h[0][a][k] - v); d > math.Abs(v)/256 {
				t.Fatalf("view %d value %d: bf16 %g, f32 %g", a, k, h[0][a][k], v)
			}
		}
	}
}

// TestAugmentGroups checks Augment's split of mixed sizes into groups.
func TestAugmentGroups(t *testing.T) {
	dev := cpuDevice(t)
	b, err := NewImageBatch(dev, []Image{testImage(40, 40, 3, 1, 0), testImage(50, 30, 3, 2, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	groups, err := Augment(b, MultiCropRecipes(2, 32, 3, 16), 1, 0, Float32)
	if err != nil {
		t.Fatal(err)
	}
	want := [][5]int{{0, 2, 32, 32}, {2, 3, 16, 16}}
	if len(groups) != len(want) {
		t.Fatalf("%d groups, want %d", len(groups), len(want))
	}
	for k, g := range groups {
		defer g.Close()
		shape := g.Views.Shape()
		if g.First != want[k][0] || g.Count != want[k][1] || g.Height != want[k][2] ||
			shape[0] != 2 || shape[1] != g.Count || shape[2] != g.Height || shape[4] != 3 {
			t.Errorf("group %d: first %d count %d size %d, shape %v; want %v", k, g.First,
				g.Count, g.Height, shape, want[k])
		}
	}
}

// TestAugmentBadInput: every invalid field gets an invalid-argument error
// that names it.
func TestAugmentBadInput(t *testing.T) {
	dev := cpuDevice(t)
	good := SimCLRRecipe(8)
	recipeCases := []struct {
		field string
		f     func(r *Recipe)
	}{
		{"out_h", func(r *Recipe) { r.Height = 0 }},
		{"out_w", func(r *Recipe) { r.Width = 0 }},
		{"scale_min", func(r *Recipe) { r.ScaleMin = 0 }},
		{"scale_max", func(r *Recipe) { r.ScaleMax = 1.5 }},
		{"scale_min", func(r *Recipe) { r.ScaleMin, r.ScaleMax = 0.9, 0.5 }},
		{"ratio_min", func(r *Recipe) { r.RatioMin = 0 }},
		{"ratio_max", func(r *Recipe) { r.RatioMax = -1 }},
		{"ratio_min", func(r *Recipe) { r.RatioMin = math.NaN() }},
		{"flip_p", func(r *Recipe) { r.FlipP = -0.1 }},
		{"jitter_p", func(r *Recipe) { r.JitterP = 1.01 }},
		{"gray_p", func(r *Recipe) { r.GrayP = math.NaN() }},
		{"blur_p", func(r *Recipe) { r.BlurP = 2 }},
		{"solarize_p", func(r *Recipe) { r.SolarizeP = -1 }},
		{"brightness", func(r *Recipe) { r.Brightness = -0.5 }},
		{"hue", func(r *Recipe) { r.Hue = 0.6 }},
		{"blur_sigma_min", func(r *Recipe) { r.BlurSigmaMin = 0 }},
		{"blur_kernel", func(r *Recipe) { r.BlurKernel = 4 }},
		{"solarize_threshold", func(r *Recipe) { r.SolarizeThreshold = 1.5 }},
		{"std", func(r *Recipe) { r.Std[1] = 0 }},
	}
	images := []Image{testImage(10, 12, 3, 1, 0)}
	for _, c := range recipeCases {
		r := good
		c.f(&r)
		err := augmentErr(dev, images, []Recipe{good, r})
		if !isInvalid(err) || !strings.Contains(err.Error(), c.field) ||
			!strings.Contains(err.Error(), "view 1") {
			t.Errorf("%s: got %v, want an invalid-argument error naming view 1's %s",
				c.field, err, c.field)
		}
	}
	imageCases := []struct {
		name, want string
		im         Image
	}{
		{"zero height", "size 0 x 5", Image{Height: 0, Width: 5, Channels: 3}},
		{"zero width", "size 4 x 0", Image{Height: 4, Width: 0, Channels: 1}},
		{"two channels", "2 channels",
			Image{Pix: make([]byte, 8), Height: 2, Width: 2, Channels: 2}},
	}
	for _, c := range imageCases {
		err := augmentErr(dev, []Image{images[0], c.im}, []Recipe{good})
		if !isInvalid(err) || !strings.Contains(err.Error(), "image 1") ||
			!strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an invalid-argument error with %q", c.name, err, c.want)
		}
	}
	_, err := NewImageBatch(dev, nil)
	if err == nil || !strings.Contains(err.Error(), "no images") {
		t.Errorf("empty batch: got %v", err)
	}
	mixed := []Recipe{good, SimCLRRecipe(9)}
	if err := augmentErr(dev, images, mixed); !isInvalid(err) ||
		!strings.Contains(err.Error(), "share a size") {
		t.Errorf("mixed sizes in one call: got %v", err)
	}
	b, _ := NewImageBatch(dev, images)
	defer b.Close()
	out, _ := dev.NewTensor(Float32, 1, 1, 8, 8, 3)
	defer out.Close()
	if err := AugmentInto(b, []Recipe{good}, 0, 1, 1<<32, out); !isInvalid(err) ||
		!strings.Contains(err.Error(), "epoch") {
		t.Errorf("epoch 2^32: got %v", err)
	}
	if err := AugmentInto(b, []Recipe{good}, 1<<16, 1, 0, out); !isInvalid(err) ||
		!strings.Contains(err.Error(), "views") {
		t.Errorf("view 65536: got %v", err)
	}
	wrong, _ := dev.NewTensor(Float32, 1, 1, 8, 9, 3)
	defer wrong.Close()
	if err := AugmentInto(b, []Recipe{good}, 0, 1, 0, wrong); !isInvalid(err) ||
		!strings.Contains(err.Error(), "shape") {
		t.Errorf("wrong out shape: got %v", err)
	}
}

// augmentErr runs one call of recipes (which must fit one group's tensor
// shape of recipes[0]) and returns its error.
func augmentErr(dev *Device, images []Image, recipes []Recipe) error {
	b, err := NewImageBatch(dev, images)
	if err != nil {
		return err
	}
	defer b.Close()
	r := recipes[0]
	out, err := dev.NewTensor(Float32, len(images), len(recipes), max(r.Height, 1),
		max(r.Width, 1), 3)
	if err != nil {
		return err
	}
	defer out.Close()
	return AugmentInto(b, recipes, 0, 1, 0, out)
}

func isInvalid(err error) bool {
	return errors.Is(err, &Error{Code: StatusInvalidArgument})
}

// TestAugmentCUDAMatchesCPU runs the same batch through the CUDA kernel
// and the CPU reference. Parameters are drawn identically (integer crop
// boxes, flips and factors are bit-equal by construction), so only the
// float32 pixel arithmetic differs: FMA contraction and the order of the
// contrast mean's sum, a few ulp of values in [0, 1], divided by std
// (>= 0.2) and summed over at most 23 blur taps: 1e-4 holds with a wide
// margin. Values within 1e-4 of a solarisation threshold may land on
// either side (then they differ by up to |1 - 2t| / std), so up to 1 in
// 10^4 values may exceed the tolerance. In bfloat16, two float32 values
// that close may round to neighbouring bf16 numbers: one ulp, |x| / 128 at
// most.
func TestAugmentCUDAMatchesCPU(t *testing.T) {
	gpu, err := Open("cuda", nil)
	if err != nil {
		t.Skip(err.Error())
	}
	defer gpu.Close()
	cpu := cpuDevice(t)
	var images []Image
	for i := 0; i < 6; i++ {
		channels := 3
		if i%3 == 0 {
			channels = 1
		}
		images = append(images, testImage(60+37*i, 90-11*i, channels, int64(i), int64(5000+i)))
	}
	byolSolar := BYOLRecipes(32)
	byolSolar[1].SolarizeP = 0.7
	groups := map[string][]Recipe{
		"simclr 32":    Repeat(SimCLRRecipe(32), 4),
		"byol 32":      byolSolar,
		"simclr 224":   Repeat(SimCLRRecipe(224), 2),
		"local 96":     MultiCropRecipes(0, 0, 3, 96),
		"identity 7x5": {IdentityRecipe(7, 5)},
	}
	for name, recipes := range groups {
		for _, dt := range []DType{Float32, BFloat16} {
			want := runViews(t, cpu, images, recipes, 2, 17, 4, dt)
			got := runViews(t, gpu, images, recipes, 2, 17, 4, dt)
			bad, total, worst := 0, 0, 0.0
			for i := range images {
				for a := range recipes {
					for k, w := range want[i][a] {
						tol := 1e-4
						if dt == BFloat16 {
							tol += math.Abs(w) / 128
						}
						d := math.Abs(got[i][a][k] - w)
						if d > tol || math.IsNaN(d) {
							bad++
						}
						worst = math.Max(worst, d)
						total++
					}
				}
			}
			t.Logf("%s %v: max |gpu - cpu| %.2g", name, dt, worst)
			if bad*10000 > total {
				t.Errorf("%s %v: %d of %d values differ by more than the tolerance", name, dt,
					bad, total)
			}
		}
	}
}
