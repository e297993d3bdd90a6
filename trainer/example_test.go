package trainer_test

import (
	"fmt"
	"image"
	"log"

	"github.com/polyview/polyview/trainer"
)

// A service loads a checkpoint once and embeds images as requests come;
// Embed is safe to call from many goroutines.
func ExampleLoadEncoder() {
	enc, err := trainer.LoadEncoder("runs/default/ckpt-000000250", "auto")
	if err != nil {
		log.Fatal(err)
	}
	defer enc.Close()
	img := image.NewRGBA(image.Rect(0, 0, 28, 28)) // any image.Image
	vecs, err := enc.Embed([]image.Image{img})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(vecs[0]) == enc.Dim())
}
