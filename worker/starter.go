package worker

// The pipeline a repository starts with (refci init).

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// PipelineFile is where a repository keeps its pipeline, relative to the
// root of a checkout: the executable a run starts.
const PipelineFile = ".refci/run"

// StarterPipeline is the pipeline InitPipeline writes: a shell script
// that says what it tests and runs one job, make test when there is a
// Makefile.
const StarterPipeline = `#!/bin/sh
# refci pipeline: any executable works (shell, Go, Python...).
# It runs in a clean checkout of the commit under test, with CI=true and
# REFCI_* variables set. Exit 0 for success, anything else for failure.
# Files written under "$REFCI_ARTIFACTS" are kept with the result.
#
# Jobs are optional; each gets its own log and state:
#   refci job build -- make build
#   refci job test --needs build -- make test &
#   refci job lint -- make lint &
#   wait
set -eu

echo "testing $REFCI_TARGET on $(uname -sm)"
if [ -f Makefile ]; then
	refci job test -- make test
else
	refci job check -- true
fi
`

// ErrPipelineExists is what InitPipeline returns (wrapped) when the work
// tree has a pipeline already and it is not to be replaced.
var ErrPipelineExists = errors.New("a pipeline exists already")

// InitPipeline writes StarterPipeline as the executable PipelineFile of
// the work tree at workTree and returns its path. An existing one (a
// file, a symlink) is replaced only when force is set; else the error
// wraps ErrPipelineExists. It writes nothing outside workTree: a
// symlinked .refci leading out of it is an error, and a symlink at
// PipelineFile is replaced, not followed.
func InitPipeline(workTree string, force bool) (string, error) {
	p := filepath.Join(workTree, PipelineFile)
	root, err := os.OpenRoot(workTree)
	if err != nil {
		return p, err
	}
	defer root.Close()
	if err := root.Mkdir(filepath.Dir(PipelineFile), 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return p, err
	}
	if _, err := root.Lstat(PipelineFile); err == nil {
		if !force {
			return p, fmt.Errorf("%s: %w", p, ErrPipelineExists)
		}
		if err := root.Remove(PipelineFile); err != nil {
			return p, err
		}
	}
	f, err := root.OpenFile(PipelineFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return p, err
	}
	_, err = f.WriteString(StarterPipeline)
	if err == nil {
		err = f.Chmod(0o755) // whatever the umask
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return p, err
}
