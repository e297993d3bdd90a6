package datasets
import ("testing";"path/filepath")
func BenchmarkJpeg(b *testing.B){ refs := readRefShard(b, filepath.Join(cifarDir(b), "train-0000.tar"), 1); var im Image; for i:=0;i<b.N;i++ { decodeImage(refs[0].jpg, 1000, &im) } }
