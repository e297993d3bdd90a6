package trainer

import (
	"errors"
	"fmt"
	"io"

	"github.com/polyview/polyview/bindings"
	"github.com/polyview/polyview/datasets"
	"github.com/polyview/polyview/trainer/eval"
	"github.com/polyview/polyview/trainer/model"
)

// EvalRecipe turns a training recipe into the deterministic one used for
// evaluation: the whole image resized to the view size, with the same
// normalisation and nothing random.
func EvalRecipe(train bindings.Recipe) bindings.Recipe {
	r := bindings.IdentityRecipe(train.Height, train.Width)
	r.Mean, r.Std = train.Mean, train.Std
	return r
}

// Embedding is what Embed returns: one row per image, with its key and
// label (-1 when the dataset has none).
type Embedding struct {
	Features *eval.Features
	Keys     []string
}

// Embed runs m (put it in evaluation mode first) over the first limit images of ds (all
// when limit <= 0), in dataset order, and returns the encoder's
// representation (head false) or the projection head's output (head
// true). Images without a label get label -1 and Features.Classes is
// ds.NumClasses() (0 when unknown).
func Embed(dev *bindings.Device, m *model.Model, ds datasets.Dataset, recipe bindings.Recipe,
	limit, batch int, head bool) (*Embedding, error) {
	n := ds.Len()
	if limit > 0 && limit < n {
		n = limit
	}
	if n == 0 {
		return nil, fmt.Errorf("embed %s: dataset is empty", ds.Source())
	}
	loader, err := datasets.NewLoader(ds, datasets.LoaderConfig{BatchSize: batch, Sequential: true})
	if err != nil {
		return nil, fmt.Errorf("embed %s: %w", ds.Source(), err)
	}
	defer loader.Close()
	dim := m.RepDim
	if head {
		dim = m.OutDim
	}
	out := &Embedding{Features: &eval.Features{Dim: dim, Classes: ds.NumClasses()}}
	for out.Features.N < n {
		b, err := loader.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("embed %s: %w", ds.Source(), err)
		}
		take := min(len(b.Samples), n-out.Features.N)
		rows, err := embedBatch(dev, m, b.Samples[:take], recipe, head)
		for _, s := range b.Samples[:take] {
			out.Keys = append(out.Keys, s.Key)
			out.Features.Labels = append(out.Features.Labels, s.Label)
		}
		b.Release()
		if err != nil {
			return nil, fmt.Errorf("embed %s: %w", ds.Source(), err)
		}
		out.Features.Data = append(out.Features.Data, rows...)
		out.Features.N += take
	}
	return out, nil
}

// embedBatch augments samples with recipe (one view each) and returns the
// chosen features as host float32, [len(samples)][dim].
func embedBatch(dev *bindings.Device, m *model.Model, samples []datasets.Sample,
	recipe bindings.Recipe, head bool) ([]float32, error) {
	views, err := augmentSamples(dev, samples, []bindings.Recipe{recipe}, 0, 0, 0, m.ActDType())
	if err != nil {
		return nil, err
	}
	defer views.Close()
	z, err := m.Forward(views)
	if err != nil {
		return nil, err
	}
	if !head {
		z = m.Representation()
	}
	return z.Float32()
}

// augmentSamples draws views firstView .. firstView+len(recipes)-1 of
// every sample (recipes must share one size) and returns them as
// [N*len(recipes), H, W, 3] of dtype (the model's activations: Float32,
// or BFloat16 in mixed precision), ready for the encoder, in a new tensor
// the caller closes.
func augmentSamples(dev *bindings.Device, samples []datasets.Sample, recipes []bindings.Recipe,
	firstView int, seed, epoch uint64, dtype bindings.DType) (*bindings.Tensor, error) {
	var views *bindings.Tensor
	err := augmentInto(dev, samples, recipes, firstView, seed, epoch, dtype, &views)
	if err != nil {
		if views != nil {
			views.Close()
		}
		return nil, err
	}
	return views, nil
}

// augmentInto is augmentSamples writing into *buf, which it reuses when
// its size fits and replaces otherwise (the training step's buffer: no
// allocation per step). The caller owns and closes *buf.
func augmentInto(dev *bindings.Device, samples []datasets.Sample, recipes []bindings.Recipe,
	firstView int, seed, epoch uint64, dtype bindings.DType, buf **bindings.Tensor) error {
	imgs := make([]bindings.Image, len(samples))
	for i, s := range samples {
		imgs[i] = bindings.Image{Pix: s.Image.Pix, Height: s.Image.H, Width: s.Image.W,
			Channels: s.Image.C, Index: int64(s.Index)}
	}
	batch, err := bindings.NewImageBatch(dev, imgs)
	if err != nil {
		return err
	}
	defer batch.Close()
	r := recipes[0]
	n, m := len(samples), len(recipes)
	if *buf != nil && ((*buf).Numel() != n*m*r.Height*r.Width*3 || (*buf).DType() != dtype) {
		(*buf).Close()
		*buf = nil
	}
	if *buf == nil {
		if *buf, err = dev.NewTensor(dtype, n, m, r.Height, r.Width, 3); err != nil {
			return err
		}
	} else if err := (*buf).Reshape(n, m, r.Height, r.Width, 3); err != nil {
		return err
	}
	if err := bindings.AugmentInto(batch, recipes, firstView, seed, epoch, *buf); err != nil {
		return err
	}
	return (*buf).Reshape(n*m, r.Height, r.Width, 3)
}
