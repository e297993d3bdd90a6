package optim

import "math"

// Schedule is a learning rate that rises linearly from Peak/WarmupSteps to
// Peak over the first WarmupSteps steps, then decays along a half cosine
// to Final at TotalSteps (and stays there).
type Schedule struct {
	Peak        float64 `json:"peak"`
	Final       float64 `json:"final"`
	WarmupSteps int     `json:"warmup_steps"`
	TotalSteps  int     `json:"total_steps"`
}

// LR is the learning rate of step (0-based): Peak (step+1)/WarmupSteps
// during warmup, then Final + (Peak - Final) (1 + cos(pi t)) / 2 with t
// the fraction of the decay steps already taken.
func (s Schedule) LR(step int) float64 {
	if step < s.WarmupSteps {
		return s.Peak * float64(step+1) / float64(s.WarmupSteps)
	}
	decay := s.TotalSteps - s.WarmupSteps
	if decay <= 0 || step >= s.TotalSteps {
		if decay <= 0 {
			return s.Peak
		}
		return s.Final
	}
	t := float64(step-s.WarmupSteps) / float64(decay)
	return s.Final + (s.Peak-s.Final)*0.5*(1+math.Cos(math.Pi*t))
}
