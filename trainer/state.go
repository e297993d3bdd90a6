package trainer

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"github.com/polyview/polyview/bindings"
	"github.com/polyview/polyview/trainer/checkpoint"
	"github.com/polyview/polyview/trainer/model"
)

// Tensor names in a checkpoint: the model's own names ("layer1.0.conv1.weight",
// "bn1.running_mean"), and "optim/" before the optimizer's state names.
const optimPrefix = "optim/"

// checkpoint writes the run's state as ckpt-<step> in the output folder
// and prunes old ones down to KeepCkpts.
func (r *run) checkpoint() error {
	if !r.rank0() {
		return nil // rank 0 holds the same state and writes it
	}
	tensors := map[string]checkpoint.Tensor{}
	add := func(prefix string, ps []*model.Param) error {
		for _, p := range ps {
			v, err := p.Value.Float32()
			if err != nil {
				return fmt.Errorf("checkpoint %s: %w", p.Name, err)
			}
			tensors[prefix+p.Name] = checkpoint.FromFloat32(v, p.Value.Shape()...)
		}
		return nil
	}
	if err := add("", r.model.Params()); err != nil {
		return err
	}
	if err := add("", r.model.Buffers()); err != nil {
		return err
	}
	if err := add(optimPrefix, r.opt.State()); err != nil {
		return err
	}
	cfg, _ := json.Marshal(r.cfg)
	st := checkpoint.State{Step: r.step, Epoch: r.epoch, BatchInEpoch: r.batchInEp,
		Seed: r.cfg.Seed, Config: cfg,
		Extra: map[string]float64{"optimizer_steps": float64(r.opt.Steps()),
			"loss": r.res.FinalLoss, "world_size": float64(r.world())}}
	base := checkpoint.BaseName(r.step)
	if err := checkpoint.Save(r.cfg.Out, base, tensors, st); err != nil {
		return err
	}
	r.res.LastCkpt = filepath.Join(r.cfg.Out, base)
	r.log.Debug("checkpoint", "path", r.res.LastCkpt)
	r.prune()
	return nil
}

// prune removes all but the newest KeepCkpts complete checkpoints.
func (r *run) prune() {
	if r.cfg.KeepCkpts <= 0 {
		return
	}
	sidecars, _ := filepath.Glob(filepath.Join(r.cfg.Out, "ckpt-*.json"))
	sort.Strings(sidecars)
	for i := 0; i < len(sidecars)-r.cfg.KeepCkpts; i++ {
		base := sidecars[i][:len(sidecars[i])-len(".json")]
		// The sidecar goes first: a tensor file without one is ignored.
		os.Remove(base + ".json")
		os.Remove(base + ".safetensors")
	}
}

// restore loads weights (and, when full, buffers, optimizer state and the
// data position) from a checkpoint. Every tensor is checked against the
// model: a missing, extra or misshapen one is an error naming it.
func (r *run) restore(tensors map[string]checkpoint.Tensor, st checkpoint.State, full bool) error {
	targets := map[string]*bindings.Tensor{}
	for _, p := range r.model.Params() {
		targets[p.Name] = p.Value
	}
	for _, p := range r.model.Buffers() {
		targets[p.Name] = p.Value
	}
	if full {
		for _, p := range r.opt.State() {
			targets[optimPrefix+p.Name] = p.Value
		}
	}
	for name, dst := range targets {
		src, ok := tensors[name]
		if !ok {
			return fmt.Errorf("checkpoint has no tensor %q (model %s)", name, r.cfg.Arch)
		}
		if !slices.Equal(src.Shape, dst.Shape()) {
			return fmt.Errorf("checkpoint tensor %q has shape %v, the model's is %v", name,
				src.Shape, dst.Shape())
		}
		v, err := src.Float32()
		if err != nil {
			return fmt.Errorf("checkpoint tensor %q: %w", name, err)
		}
		if err := dst.WriteFloat32(v); err != nil {
			return fmt.Errorf("checkpoint tensor %q: %w", name, err)
		}
	}
	for name := range tensors {
		_, isOpt := targets[name]
		if !isOpt && (full || len(name) < len(optimPrefix) || name[:len(optimPrefix)] != optimPrefix) {
			return fmt.Errorf("checkpoint tensor %q does not belong to model %s", name, r.cfg.Arch)
		}
	}
	if full {
		r.step, r.epoch, r.batchInEp = st.Step, st.Epoch, st.BatchInEpoch
		r.opt.SetSteps(int(st.Extra["optimizer_steps"]))
		r.res.FinalLoss = st.Extra["loss"]
	}
	return nil
}
