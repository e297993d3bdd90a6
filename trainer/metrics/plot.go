package metrics

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"os"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Point is one (x, y) sample of a series.
type Point struct{ X, Y float64 }

// PlotPNG draws one series as a line chart with labelled axes and writes
// it to path as PNG. Non-finite points are skipped.
func PlotPNG(path, title, xlabel string, pts []Point) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := drawPlot(f, title, xlabel, pts); err != nil {
		f.Close()
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return f.Close()
}

const (
	plotW, plotH               = 640, 400
	marginL, marginR, marginTB = 70, 20, 40
)

var (
	ink   = color.RGBA{30, 30, 30, 255}
	grid  = color.RGBA{225, 225, 225, 255}
	trace = color.RGBA{31, 119, 180, 255}
)

func drawPlot(w io.Writer, title, xlabel string, pts []Point) error {
	img := image.NewRGBA(image.Rect(0, 0, plotW, plotH))
	for i := range img.Pix {
		img.Pix[i] = 255
	}
	var good []Point
	for _, p := range pts {
		if !math.IsNaN(p.X) && !math.IsNaN(p.Y) && !math.IsInf(p.X, 0) && !math.IsInf(p.Y, 0) {
			good = append(good, p)
		}
	}
	text(img, marginL, 20, title)
	text(img, plotW/2-len(xlabel)*3, plotH-8, xlabel)
	if len(good) == 0 {
		text(img, plotW/2-30, plotH/2, "no data")
		return png.Encode(w, img)
	}
	x0, x1, y0, y1 := good[0].X, good[0].X, good[0].Y, good[0].Y
	for _, p := range good {
		x0, x1 = math.Min(x0, p.X), math.Max(x1, p.X)
		y0, y1 = math.Min(y0, p.Y), math.Max(y1, p.Y)
	}
	if x1 == x0 {
		x1 = x0 + 1
	}
	if y1 == y0 {
		y0, y1 = y0-0.5, y1+0.5
	}
	pad := (y1 - y0) * 0.05
	y0, y1 = y0-pad, y1+pad
	left, right, top, bottom := marginL, plotW-marginR, marginTB, plotH-marginTB
	px := func(x float64) int { return left + int((x-x0)/(x1-x0)*float64(right-left)) }
	py := func(y float64) int { return bottom - int((y-y0)/(y1-y0)*float64(bottom-top)) }

	// Grid and tick labels: five divisions on each axis.
	for k := 0; k <= 4; k++ {
		yv := y0 + (y1-y0)*float64(k)/4
		line(img, left, py(yv), right, py(yv), grid)
		text(img, 4, py(yv)+4, fmt.Sprintf("%.4g", yv))
		xv := x0 + (x1-x0)*float64(k)/4
		line(img, px(xv), top, px(xv), bottom, grid)
		text(img, px(xv)-12, bottom+16, fmt.Sprintf("%.4g", xv))
	}
	line(img, left, bottom, right, bottom, ink)
	line(img, left, top, left, bottom, ink)
	for i := 1; i < len(good); i++ {
		line(img, px(good[i-1].X), py(good[i-1].Y), px(good[i].X), py(good[i].Y), trace)
	}
	if len(good) == 1 {
		x, y := px(good[0].X), py(good[0].Y)
		for d := -2; d <= 2; d++ {
			img.Set(x+d, y, trace)
			img.Set(x, y+d, trace)
		}
	}
	return png.Encode(w, img)
}

func text(img *image.RGBA, x, y int, s string) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(ink), Face: basicfont.Face7x13,
		Dot: fixed.P(x, y)}
	d.DrawString(s)
}

// line draws with Bresenham's algorithm.
func line(img *image.RGBA, x0, y0, x1, y1 int, c color.RGBA) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := sign(x1-x0), sign(y1-y0)
	e := dx + dy
	for {
		img.SetRGBA(x0, y0, c)
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * e
		if e2 >= dy {
			e += dy
			x0 += sx
		}
		if e2 <= dx {
			e += dx
			y0 += sy
		}
	}
}

func abs(a int) int {
	if a < 0 {
		return -a
	}
	return a
}

func sign(a int) int {
	switch {
	case a > 0:
		return 1
	case a < 0:
		return -1
	}
	return 0
}
