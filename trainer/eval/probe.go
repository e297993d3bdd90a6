package eval

import (
	"fmt"
	"math"
	"math/rand"
)

// ProbeConfig sets the linear probe's training: softmax regression on
// frozen, standardised features, trained with Adam on mini-batches.
type ProbeConfig struct {
	Epochs      int     // passes over the training features (default 100)
	BatchSize   int     // default 256
	LR          float64 // Adam step size (default 1e-3)
	WeightDecay float64 // L2 on the weights (default 1e-4)
	Seed        int64
}

// ProbeResult is the probe's accuracy on the test features.
type ProbeResult struct {
	Top1, Top5 float64
	TrainLoss  float64 // mean cross-entropy of the last epoch
}

func (c *ProbeConfig) defaults() {
	if c.Epochs <= 0 {
		c.Epochs = 100
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 256
	}
	if c.LR <= 0 {
		c.LR = 1e-3
	}
	if c.WeightDecay < 0 {
		c.WeightDecay = 0
	}
}

// LinearProbe trains a linear classifier on train and reports top-1 and
// top-5 accuracy on test. Features are standardised with train's
// per-dimension mean and standard deviation.
func LinearProbe(train, test *Features, cfg ProbeConfig) (ProbeResult, error) {
	cfg.defaults()
	if err := train.Validate("probe train"); err != nil {
		return ProbeResult{}, err
	}
	if err := test.Validate("probe test"); err != nil {
		return ProbeResult{}, err
	}
	if train.Dim != test.Dim {
		return ProbeResult{}, fmt.Errorf("probe: train width %d, test width %d", train.Dim, test.Dim)
	}
	dim, classes := train.Dim, train.Classes
	if test.Classes > classes {
		classes = test.Classes
	}
	mean, std := moments(train)
	x := standardise(train, mean, std)
	xt := standardise(test, mean, std)

	// Weights [classes][dim+1], the last column the bias; Adam moments.
	w := make([]float64, classes*(dim+1))
	m1 := make([]float64, len(w))
	m2 := make([]float64, len(w))
	grad := make([]float64, len(w))
	logits := make([]float64, classes)
	rng := rand.New(rand.NewSource(cfg.Seed))
	order := rng.Perm(train.N)
	var step int
	var lastLoss float64
	for ep := 0; ep < cfg.Epochs; ep++ {
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		var epochLoss float64
		for start := 0; start < train.N; start += cfg.BatchSize {
			end := min(start+cfg.BatchSize, train.N)
			for i := range grad {
				grad[i] = 0
			}
			for _, r := range order[start:end] {
				row := x[r*dim : (r+1)*dim]
				epochLoss += softmaxGrad(w, row, train.Labels[r], classes, dim, logits, grad)
			}
			step++
			adam(w, grad, m1, m2, step, cfg, float64(end-start), dim)
		}
		lastLoss = epochLoss / float64(train.N)
	}
	top1, top5 := 0, 0
	for r := 0; r < test.N; r++ {
		scores(w, xt[r*dim:(r+1)*dim], classes, dim, logits)
		rank := 0
		for c := 0; c < classes; c++ {
			if logits[c] > logits[test.Labels[r]] {
				rank++
			}
		}
		if rank == 0 {
			top1++
		}
		if rank < 5 {
			top5++
		}
	}
	return ProbeResult{
		Top1: float64(top1) / float64(test.N), Top5: float64(top5) / float64(test.N),
		TrainLoss: lastLoss,
	}, nil
}

func moments(f *Features) (mean, std []float64) {
	mean = make([]float64, f.Dim)
	std = make([]float64, f.Dim)
	for r := 0; r < f.N; r++ {
		for j := 0; j < f.Dim; j++ {
			mean[j] += float64(f.Data[r*f.Dim+j])
		}
	}
	for j := range mean {
		mean[j] /= float64(f.N)
	}
	for r := 0; r < f.N; r++ {
		for j := 0; j < f.Dim; j++ {
			d := float64(f.Data[r*f.Dim+j]) - mean[j]
			std[j] += d * d
		}
	}
	for j := range std {
		std[j] = math.Sqrt(std[j]/float64(f.N)) + 1e-6
	}
	return mean, std
}

func standardise(f *Features, mean, std []float64) []float64 {
	out := make([]float64, f.N*f.Dim)
	for r := 0; r < f.N; r++ {
		for j := 0; j < f.Dim; j++ {
			out[r*f.Dim+j] = (float64(f.Data[r*f.Dim+j]) - mean[j]) / std[j]
		}
	}
	return out
}

func scores(w, row []float64, classes, dim int, out []float64) {
	for c := 0; c < classes; c++ {
		wc := w[c*(dim+1) : (c+1)*(dim+1)]
		s := wc[dim]
		for j, v := range row {
			s += wc[j] * v
		}
		out[c] = s
	}
}

// softmaxGrad adds one example's cross-entropy gradient to grad and
// returns its loss.
func softmaxGrad(w, row []float64, label, classes, dim int, logits, grad []float64) float64 {
	scores(w, row, classes, dim, logits)
	mx := logits[0]
	for _, v := range logits {
		mx = math.Max(mx, v)
	}
	var z float64
	for _, v := range logits {
		z += math.Exp(v - mx)
	}
	lse := mx + math.Log(z)
	for c := 0; c < classes; c++ {
		p := math.Exp(logits[c] - lse)
		if c == label {
			p--
		}
		gc := grad[c*(dim+1) : (c+1)*(dim+1)]
		for j, v := range row {
			gc[j] += p * v
		}
		gc[dim] += p
	}
	return lse - logits[label]
}

// adam applies one Adam step with decoupled-free L2 weight decay on the
// weights (not the biases); grad holds the batch sum.
func adam(w, grad, m1, m2 []float64, step int, cfg ProbeConfig, batch float64, dim int) {
	const b1, b2, eps = 0.9, 0.999, 1e-8
	c1 := 1 - math.Pow(b1, float64(step))
	c2 := 1 - math.Pow(b2, float64(step))
	for i := range w {
		g := grad[i] / batch
		if i%(dim+1) != dim {
			g += cfg.WeightDecay * w[i]
		}
		m1[i] = b1*m1[i] + (1-b1)*g
		m2[i] = b2*m2[i] + (1-b2)*g*g
		w[i] -= cfg.LR * (m1[i] / c1) / (math.Sqrt(m2[i]/c2) + eps)
	}
}
