package trainer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/draw"
	_ "image/jpeg" // decoders for EmbedEncoded
	_ "image/png"
	"slices"
	"strings"
	"sync"

	"github.com/polyview/polyview/bindings"
	"github.com/polyview/polyview/datasets"
	"github.com/polyview/polyview/trainer/checkpoint"
	"github.com/polyview/polyview/trainer/model"
)

// Encoder is a trained encoder loaded from a checkpoint, for services that
// embed images. It is safe for concurrent use: calls are serialised on
// the device, so run one Encoder per device and batch requests for speed.
//
//	enc, err := trainer.LoadEncoder("runs/default/ckpt-000000250", "auto")
//	if err != nil { ... }
//	defer enc.Close()
//	vecs, err := enc.Embed([]image.Image{img}) // one []float32 per image
type Encoder struct {
	mu     sync.Mutex
	dev    *bindings.Device
	model  *model.Model
	recipe bindings.Recipe
	cfg    Config
	// Head selects the projection head's output instead of the encoder's
	// representation (the usual choice for downstream tasks is false).
	Head bool
}

// LoadEncoder builds the checkpoint's model on device ("auto", "cpu",
// "cuda:N") and loads its weights and BN statistics. The views the model
// sees are the checkpoint's view size and normalisation, without
// randomness (EvalRecipe).
func LoadEncoder(path, device string) (*Encoder, error) {
	tensors, st, err := checkpoint.Load(path)
	if err != nil {
		return nil, err
	}
	cfg := DefaultConfig()
	dec := json.NewDecoder(bytes.NewReader(st.Config))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("load encoder %s: config: %v", path, err)
	}
	recipes, err := cfg.Recipes()
	if err != nil {
		return nil, fmt.Errorf("load encoder %s: %w", path, err)
	}
	dev, err := bindings.Open(device, nil)
	if err != nil {
		return nil, err
	}
	m, err := model.New(dev, model.Config{Arch: cfg.Arch, Stem: cfg.Stem, Width: cfg.Width,
		HeadDims: cfg.HeadDims, ZeroInitResidual: cfg.ZeroInit, Seed: cfg.Seed})
	if err != nil {
		dev.Close()
		return nil, err
	}
	e := &Encoder{dev: dev, model: m, recipe: EvalRecipe(recipes[0]), cfg: cfg}
	if err := e.load(tensors); err != nil {
		e.Close()
		return nil, fmt.Errorf("load encoder %s: %w", path, err)
	}
	m.SetTraining(false)
	return e, nil
}

func (e *Encoder) load(tensors map[string]checkpoint.Tensor) error {
	params := append(e.model.Params(), e.model.Buffers()...)
	for _, p := range params {
		src, ok := tensors[p.Name]
		if !ok {
			return fmt.Errorf("checkpoint has no tensor %q", p.Name)
		}
		if !slices.Equal(src.Shape, p.Value.Shape()) {
			return fmt.Errorf("tensor %q has shape %v, the model's is %v", p.Name, src.Shape,
				p.Value.Shape())
		}
		v, err := src.Float32()
		if err == nil {
			err = p.Value.WriteFloat32(v)
		}
		if err != nil {
			return fmt.Errorf("tensor %q: %w", p.Name, err)
		}
	}
	for name := range tensors {
		if !strings.HasPrefix(name, optimPrefix) && !hasParam(params, name) {
			return fmt.Errorf("tensor %q does not belong to model %s", name, e.cfg.Arch)
		}
	}
	return nil
}

func hasParam(ps []*model.Param, name string) bool {
	for _, p := range ps {
		if p.Name == name {
			return true
		}
	}
	return false
}

// Dim is the length of the vectors Embed returns.
func (e *Encoder) Dim() int {
	if e.Head {
		return e.model.OutDim
	}
	return e.model.RepDim
}

// Device is the device the encoder runs on.
func (e *Encoder) Device() *bindings.Device { return e.dev }

// Embed returns one vector per image (any size, any colour model: images
// are converted to 8-bit RGB, resized to the training view size and
// normalised as in training).
func (e *Encoder) Embed(images []image.Image) ([][]float32, error) {
	if len(images) == 0 {
		return nil, nil
	}
	batch := make([]bindings.Image, len(images))
	for i, img := range images {
		if img == nil || img.Bounds().Empty() {
			return nil, fmt.Errorf("embed: image %d is empty", i)
		}
		batch[i] = toRGB(img, int64(i))
	}
	return e.embed(batch)
}

// EmbedEncoded decodes PNG or JPEG bytes and embeds them. A bad image is
// an error naming its position in the batch.
func (e *Encoder) EmbedEncoded(files [][]byte) ([][]float32, error) {
	images := make([]image.Image, len(files))
	for i, b := range files {
		cfg, _, err := image.DecodeConfig(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("embed: image %d: %v", i, err)
		}
		if cfg.Width > 8192 || cfg.Height > 8192 {
			return nil, fmt.Errorf("embed: image %d is %dx%d, larger than 8192 pixels a side", i,
				cfg.Width, cfg.Height)
		}
		if images[i], _, err = image.Decode(bytes.NewReader(b)); err != nil {
			return nil, fmt.Errorf("embed: image %d: %v", i, err)
		}
	}
	return e.Embed(images)
}

func (e *Encoder) embed(batch []bindings.Image) ([][]float32, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ib, err := bindings.NewImageBatch(e.dev, batch)
	if err != nil {
		return nil, fmt.Errorf("embed: %w", err)
	}
	defer ib.Close()
	r := e.recipe
	views, err := e.dev.NewTensor(bindings.Float32, len(batch), 1, r.Height, r.Width, 3)
	if err != nil {
		return nil, err
	}
	defer views.Close()
	if err := bindings.AugmentInto(ib, []bindings.Recipe{r}, 0, 0, 0, views); err != nil {
		return nil, fmt.Errorf("embed: %w", err)
	}
	if err := views.Reshape(len(batch), r.Height, r.Width, 3); err != nil {
		return nil, err
	}
	z, err := e.model.Forward(views)
	if err != nil {
		return nil, fmt.Errorf("embed: %w", err)
	}
	if !e.Head {
		z = e.model.Representation()
	}
	flat, err := z.Float32()
	if err != nil {
		return nil, err
	}
	dim := e.Dim()
	out := make([][]float32, len(batch))
	for i := range out {
		out[i] = flat[i*dim : (i+1)*dim : (i+1)*dim]
	}
	return out, nil
}

// Close frees the model and the device.
func (e *Encoder) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.model != nil {
		e.model.Close()
		e.model = nil
	}
	if e.dev != nil {
		e.dev.Close()
		e.dev = nil
	}
}

// toRGB converts any image to packed 8-bit RGB.
func toRGB(img image.Image, index int64) bindings.Image {
	b := img.Bounds()
	rgba := image.NewRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	draw.Draw(rgba, rgba.Bounds(), img, b.Min, draw.Src)
	pix := make([]byte, 0, b.Dx()*b.Dy()*3)
	for i := 0; i < len(rgba.Pix); i += 4 {
		pix = append(pix, rgba.Pix[i], rgba.Pix[i+1], rgba.Pix[i+2])
	}
	return bindings.Image{Pix: pix, Height: b.Dy(), Width: b.Dx(), Channels: 3, Index: index}
}

// EmbedDataset embeds the first limit images of ds (all when limit <= 0),
// in dataset order, with their keys and labels.
func (e *Encoder) EmbedDataset(ds datasets.Dataset, limit, batch int) (*Embedding, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return Embed(e.dev, e.model, ds, e.recipe, limit, batch, e.Head)
}
