package bindings

/*
#include <stdlib.h>
#include "polyview.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"unsafe"
)

// Recipe says how one view is drawn from an image (pv_view_recipe): a
// random resized crop to Height x Width, horizontal flip, colour jitter in
// a random order, grayscale, Gaussian blur, solarisation and per-channel
// normalisation, each as torchvision.transforms.v2 defines it. Probability
// fields (names ending in P) are in [0, 1]. Field names mirror the C
// struct's, so an error such as "view 1: scale_min = 0" names ScaleMin.
type Recipe struct {
	Height, Width      int     // output size in pixels, 1 .. 4096
	ScaleMin, ScaleMax float64 // crop area / image area, in (0, 1]
	RatioMin, RatioMax float64 // crop width / height, log-uniform, > 0
	FlipP              float64
	JitterP            float64
	// Jitter strengths: factors uniform in [max(0, 1-x), 1+x]; Hue, in
	// [0, 0.5], is a shift uniform in [-Hue, Hue] turns. 0 skips the op.
	Brightness, Contrast, Saturation, Hue float64
	GrayP                                 float64
	BlurP                                 float64
	BlurSigmaMin, BlurSigmaMax            float64 // output pixels, > 0
	BlurKernel                            int     // odd taps; 0: 10% of the smaller side
	SolarizeP                             float64
	SolarizeThreshold                     float64    // in [0, 1]: x >= it becomes 1 - x
	Mean, Std                             [3]float64 // RGB, applied as (x - Mean) / Std
}

// ImageNetMean and ImageNetStd are the usual normalisation of ImageNet.
var (
	ImageNetMean = [3]float64{0.485, 0.456, 0.406}
	ImageNetStd  = [3]float64{0.229, 0.224, 0.225}
)

// CIFAR10Mean and CIFAR10Std are the per-channel statistics of CIFAR-10's
// training set.
var (
	CIFAR10Mean = [3]float64{0.4914, 0.4822, 0.4465}
	CIFAR10Std  = [3]float64{0.2470, 0.2435, 0.2616}
)

// SimCLRRecipe is SimCLR's ImageNet augmentation (Chen et al. 2020,
// appendix A) at size x size: crop scale [0.08, 1], ratio [3/4, 4/3],
// flip 0.5, colour jitter (0.8, 0.8, 0.8, 0.2) with probability 0.8,
// grayscale 0.2, blur with probability 0.5 (sigma [0.1, 2], 10% kernel),
// ImageNet normalisation. It is the default recipe.
func SimCLRRecipe(size int) Recipe {
	return Recipe{
		Height: size, Width: size,
		ScaleMin: 0.08, ScaleMax: 1, RatioMin: 3.0 / 4, RatioMax: 4.0 / 3,
		FlipP: 0.5, JitterP: 0.8, Brightness: 0.8, Contrast: 0.8, Saturation: 0.8, Hue: 0.2,
		GrayP: 0.2, BlurP: 0.5, BlurSigmaMin: 0.1, BlurSigmaMax: 2,
		SolarizeThreshold: 0.5, Mean: ImageNetMean, Std: ImageNetStd,
	}
}

// SimCLRCIFARRecipe is SimCLR's CIFAR-10 variant: jitter strength 0.5
// (0.4, 0.4, 0.4, 0.1), no blur, CIFAR-10 normalisation.
func SimCLRCIFARRecipe(size int) Recipe {
	r := SimCLRRecipe(size)
	r.Brightness, r.Contrast, r.Saturation, r.Hue = 0.4, 0.4, 0.4, 0.1
	r.BlurP = 0
	r.Mean, r.Std = CIFAR10Mean, CIFAR10Std
	return r
}

// BYOLRecipes is BYOL's asymmetric pair (Grill et al. 2020, table 6):
// jitter (0.4, 0.4, 0.2, 0.1) with probability 0.8, grayscale 0.2; the
// first view is always blurred, the second blurred with probability 0.1
// and solarised with probability 0.2.
func BYOLRecipes(size int) []Recipe {
	r := SimCLRRecipe(size)
	r.Brightness, r.Contrast, r.Saturation, r.Hue = 0.4, 0.4, 0.2, 0.1
	a, b := r, r
	a.BlurP = 1
	b.BlurP, b.SolarizeP = 0.1, 0.2
	return []Recipe{a, b}
}

// MultiCropRecipes is the multi-crop recipe of SwAV and DINO: global views
// of globalSize with crop scale [0.4, 1], then local views of localSize
// with scale [0.05, 0.4], both otherwise SimCLR's. The two sizes come back
// from Augment as two groups.
func MultiCropRecipes(globalViews, globalSize, localViews, localSize int) []Recipe {
	var out []Recipe
	for k := 0; k < globalViews; k++ {
		r := SimCLRRecipe(globalSize)
		r.ScaleMin = 0.4
		out = append(out, r)
	}
	for k := 0; k < localViews; k++ {
		r := SimCLRRecipe(localSize)
		r.ScaleMin, r.ScaleMax = 0.05, 0.4
		out = append(out, r)
	}
	return out
}

// IdentityRecipe resizes the whole image to height x width and does
// nothing else: no random op, mean 0 and std 1, so the views hold the
// resized pixels in [0, 1]. ScaleMin = 1 makes the crop the full image.
func IdentityRecipe(height, width int) Recipe {
	return Recipe{
		Height: height, Width: width, ScaleMin: 1, ScaleMax: 1, RatioMin: 1e-6, RatioMax: 1e6,
		BlurSigmaMin: 1, BlurSigmaMax: 1, SolarizeThreshold: 0.5,
		Std: [3]float64{1, 1, 1},
	}
}

// Repeat returns m copies of r, the recipe list of M views drawn alike.
func Repeat(r Recipe, m int) []Recipe {
	out := make([]Recipe, m)
	for k := range out {
		out[k] = r
	}
	return out
}

func (r Recipe) c() C.pv_view_recipe {
	var cr C.pv_view_recipe
	cr.out_h, cr.out_w = C.int64_t(r.Height), C.int64_t(r.Width)
	cr.scale_min, cr.scale_max = C.double(r.ScaleMin), C.double(r.ScaleMax)
	cr.ratio_min, cr.ratio_max = C.double(r.RatioMin), C.double(r.RatioMax)
	cr.flip_p, cr.jitter_p = C.double(r.FlipP), C.double(r.JitterP)
	cr.brightness, cr.contrast = C.double(r.Brightness), C.double(r.Contrast)
	cr.saturation, cr.hue = C.double(r.Saturation), C.double(r.Hue)
	cr.gray_p, cr.blur_p = C.double(r.GrayP), C.double(r.BlurP)
	cr.blur_sigma_min, cr.blur_sigma_max = C.double(r.BlurSigmaMin), C.double(r.BlurSigmaMax)
	cr.blur_kernel = C.int64_t(r.BlurKernel)
	cr.solarize_p, cr.solarize_threshold = C.double(r.SolarizeP), C.double(r.SolarizeThreshold)
	for c := 0; c < 3; c++ {
		cr.mean[c], cr.std[c] = C.double(r.Mean[c]), C.double(r.Std[c])
	}
	return cr
}

// Image is one decoded image: Height x Width x Channels bytes in Pix (HWC,
// row-major), Channels 1 (gray, used as R = G = B) or 3 (RGB). Index is
// its global index in the dataset: with the seed and epoch it keys the
// randomness of its views.
type Image struct {
	Pix                     []byte
	Height, Width, Channels int
	Index                   int64
}

// ImageBatch is N images packed into one uint8 tensor on a device, the
// input of Augment. Close it when done.
type ImageBatch struct {
	dev    *Device
	pixels *Tensor
	// offset, height, width, channels and index: n int64s each, in one C
	// allocation (C memory, so the C call may keep pointers to it).
	meta unsafe.Pointer
	n    int
}

// NewImageBatch copies images into one uint8 tensor on dev. It fails on
// an empty list and on an image whose Pix is not Height*Width*Channels
// bytes.
func NewImageBatch(dev *Device, images []Image) (*ImageBatch, error) {
	n := len(images)
	if n == 0 {
		return nil, fmt.Errorf("new image batch: no images")
	}
	total := 0
	for i, im := range images {
		if want := im.Height * im.Width * im.Channels; len(im.Pix) != want {
			return nil, fmt.Errorf("new image batch: image %d is %dx%dx%d but has %d bytes",
				i, im.Height, im.Width, im.Channels, len(im.Pix))
		}
		total += len(im.Pix)
	}
	packed := make([]byte, 0, total)
	b := &ImageBatch{dev: dev, n: n, meta: C.malloc(C.size_t(5 * 8 * n))}
	if b.meta == nil {
		return nil, fmt.Errorf("new image batch: out of host memory")
	}
	off, h, w, ch, idx := b.arrays()
	for i, im := range images {
		off[i], h[i], w[i] = C.int64_t(len(packed)), C.int64_t(im.Height), C.int64_t(im.Width)
		ch[i], idx[i] = C.int64_t(im.Channels), C.int64_t(im.Index)
		packed = append(packed, im.Pix...)
	}
	t, err := dev.NewTensor(Uint8, total)
	if err == nil {
		err = t.WriteBytes(packed)
	}
	if err != nil {
		C.free(b.meta)
		return nil, fmt.Errorf("new image batch: %w", err)
	}
	b.pixels = t
	runtime.SetFinalizer(b, (*ImageBatch).Close)
	return b, nil
}

// arrays views the C metadata as five slices of n.
func (b *ImageBatch) arrays() (off, h, w, ch, idx []C.int64_t) {
	all := unsafe.Slice((*C.int64_t)(b.meta), 5*b.n)
	return all[:b.n], all[b.n : 2*b.n], all[2*b.n : 3*b.n], all[3*b.n : 4*b.n], all[4*b.n:]
}

// Len is the number of images.
func (b *ImageBatch) Len() int { return b.n }

// Device is the device that holds the pixels.
func (b *ImageBatch) Device() *Device { return b.dev }

// Close frees the pixels and the metadata. Calling it twice is harmless.
func (b *ImageBatch) Close() {
	if b.pixels == nil {
		return
	}
	b.pixels.Close()
	b.pixels = nil
	C.free(b.meta)
	b.meta = nil
	runtime.SetFinalizer(b, nil)
}

// ViewGroup is the views of one output size: views First .. First+Count-1
// of every image, in Views [N, Count, Height, Width, 3] (NHWC per view;
// row i*Count + a is view First+a of image i, the loss's sample-major
// order).
type ViewGroup struct {
	First, Count  int
	Height, Width int
	Views         *Tensor
}

// Close frees the group's tensor.
func (g ViewGroup) Close() { g.Views.Close() }

// Groups splits recipes into runs of consecutive recipes of one output
// size, as Augment returns them: [first, count] pairs. Multi-crop's
// globals-then-locals list gives two.
func Groups(recipes []Recipe) [][2]int {
	var out [][2]int
	for k := range recipes {
		if k > 0 && recipes[k].Height == recipes[k-1].Height &&
			recipes[k].Width == recipes[k-1].Width {
			out[len(out)-1][1]++
			continue
		}
		out = append(out, [2]int{k, 1})
	}
	return out
}

// Augment draws view m of every image of b with recipes[m], for m in
// [0, len(recipes)), and returns one ViewGroup per run of equal sizes
// (see Groups), each a new tensor of dtype (Float32, or BFloat16) on b's
// device. Every random parameter of view m of an image comes from
// Philox-4x32-10 keyed by (seed, epoch, the image's Index, m), so the
// views do not depend on the batch they arrive in. On error no tensor is
// left open.
func Augment(b *ImageBatch, recipes []Recipe, seed, epoch uint64,
	dtype DType) ([]ViewGroup, error) {
	if len(recipes) == 0 {
		return nil, fmt.Errorf("augment: no recipes")
	}
	var groups []ViewGroup
	for _, fc := range Groups(recipes) {
		r := recipes[fc[0]]
		t, err := b.dev.NewTensor(dtype, b.n, fc[1], r.Height, r.Width, 3)
		if err == nil {
			err = AugmentInto(b, recipes[fc[0]:fc[0]+fc[1]], fc[0], seed, epoch, t)
			if err != nil {
				t.Close()
			}
		}
		if err != nil {
			for _, g := range groups {
				g.Close()
			}
			return nil, err
		}
		groups = append(groups, ViewGroup{First: fc[0], Count: fc[1], Height: r.Height,
			Width: r.Width, Views: t})
	}
	return groups, nil
}

// AugmentInto writes views firstView .. firstView+len(recipes)-1 of every
// image of b into out, a tensor [N, len(recipes), Height, Width, 3] of
// Float32 or BFloat16 on b's device; recipes[a] draws view firstView+a and
// all share one size. It is the buffer-reusing form of Augment.
func AugmentInto(b *ImageBatch, recipes []Recipe, firstView int, seed, epoch uint64,
	out *Tensor) error {
	if b == nil || b.pixels == nil {
		return fmt.Errorf("augment: image batch is nil or closed")
	}
	if len(recipes) == 0 {
		return fmt.Errorf("augment: no recipes")
	}
	op, err := out.handle("out")
	if err != nil {
		return fmt.Errorf("augment: %w", err)
	}
	cr := make([]C.pv_view_recipe, len(recipes))
	for k, r := range recipes {
		cr[k] = r.c()
	}
	off, h, w, ch, idx := b.arrays()
	batch := C.pv_image_batch{
		n: C.int64_t(b.n), pixels: b.pixels.ptr,
		offset: &off[0], height: &h[0], width: &w[0], channels: &ch[0], index: &idx[0],
	}
	err = call("augment", func() C.pv_status {
		return C.pv_augment(b.dev.ptr, &batch, &cr[0], C.int64_t(firstView),
			C.int64_t(len(recipes)), C.uint64_t(seed), C.uint64_t(epoch), op)
	})
	runtime.KeepAlive(b)
	runtime.KeepAlive(out)
	return err
}

// JitterOp is one colour jitter op, as ViewParams.Order lists them.
type JitterOp int

// The jitter ops.
const (
	JitterBrightness JitterOp = C.PV_JITTER_BRIGHTNESS
	JitterContrast   JitterOp = C.PV_JITTER_CONTRAST
	JitterSaturation JitterOp = C.PV_JITTER_SATURATION
	JitterHue        JitterOp = C.PV_JITTER_HUE
)

func (o JitterOp) String() string {
	switch o {
	case JitterBrightness:
		return "brightness"
	case JitterContrast:
		return "contrast"
	case JitterSaturation:
		return "saturation"
	case JitterHue:
		return "hue"
	}
	return fmt.Sprintf("jitter(%d)", int(o))
}

// ViewParams are the parameters drawn for one view (pv_view_params).
type ViewParams struct {
	CropY, CropX, CropH, CropW int // crop box in source pixels
	Flip, Gray, Blur, Solarize bool
	Order                      []JitterOp // jitter ops applied, in order; empty: no jitter
	Brightness, Contrast       float32    // factors; 1 when not applied
	Saturation                 float32
	Hue                        float32 // shift in turns; 0 when not applied
	BlurSigma                  float32 // 0 when not blurred
	BlurKernel                 int     // taps per axis, resolved
	SolarizeThreshold          float32
}

// SampleView returns the parameters Augment draws for view `view` of the
// image with global index `index` and size height x width under (seed,
// epoch) with recipe r.
func SampleView(r Recipe, seed, epoch uint64, index int64, view, height, width int) (ViewParams,
	error) {
	cr := r.c()
	var p C.pv_view_params
	err := call("sample view", func() C.pv_status {
		return C.pv_view_sample(&cr, C.uint64_t(seed), C.uint64_t(epoch), C.int64_t(index),
			C.int64_t(view), C.int64_t(height), C.int64_t(width), &p)
	})
	if err != nil {
		return ViewParams{}, err
	}
	v := ViewParams{
		CropY: int(p.crop_y), CropX: int(p.crop_x), CropH: int(p.crop_h), CropW: int(p.crop_w),
		Flip: p.flip != 0, Gray: p.gray != 0, Blur: p.blur != 0, Solarize: p.solarize != 0,
		Brightness: float32(p.brightness), Contrast: float32(p.contrast),
		Saturation: float32(p.saturation), Hue: float32(p.hue),
		BlurSigma: float32(p.blur_sigma), BlurKernel: int(p.blur_kernel),
		SolarizeThreshold: float32(p.solarize_threshold),
	}
	for k := 0; k < int(p.jitter_ops); k++ {
		v.Order = append(v.Order, JitterOp(p.order[k]))
	}
	return v, nil
}

// Philox4x32 is one block of Philox-4x32-10, the generator behind every
// view's parameters: four 32-bit words of counter ctr under key.
func Philox4x32(ctr [4]uint32, key [2]uint32) [4]uint32 {
	var cc [4]C.uint32_t
	var ck [2]C.uint32_t
	var co [4]C.uint32_t
	for k := range cc {
		cc[k] = C.uint32_t(ctr[k])
	}
	ck[0], ck[1] = C.uint32_t(key[0]), C.uint32_t(key[1])
	C.pv_philox4x32_10(&cc[0], &ck[0], &co[0])
	return [4]uint32{uint32(co[0]), uint32(co[1]), uint32(co[2]), uint32(co[3])}
}
