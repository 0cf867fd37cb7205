package worker

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"refci.dev/refci/lightbin"
)

// JobClientName is the light job client's executable (cmd/refci-job),
// looked for beside the refci executable.
const JobClientName = "refci-job"

// jobClientPackage is the main package a refci-job executable is built
// from.
const jobClientPackage = "refci.dev/refci/cmd/refci-job"

// jobClients keeps ChooseJobClient's answers, per refci executable.
var jobClients sync.Map // string → jobClientChoice

type jobClientChoice struct{ path, note string }

// ChooseJobClient picks what a run's pipeline finds as refci on its PATH
// when refciPath is the refci executable (RunSpec.RefciPath): the light
// job client refci-job beside it (path, with symbolic links resolved)
// when that is an executable file built from cmd/refci-job of this
// process's build, with refciPath's file beside it as refci (what it
// runs for every command but job and secret), else "" (refciPath
// itself, whose start costs each `refci job` several milliseconds more).
// The build is read from the file (debug/buildinfo), without running it,
// and compared with this build (lightbin.OfThisBuild), so that a refci-job left from
// another build is never used. note, when not empty, says why a refci-job
// that is there was refused. The answer is kept for the life of the
// process; safe for concurrent use.
func ChooseJobClient(refciPath string) (path, note string) {
	if c, ok := jobClients.Load(refciPath); ok {
		c := c.(jobClientChoice)
		return c.path, c.note
	}
	path, note = chooseJobClient(refciPath)
	jobClients.Store(refciPath, jobClientChoice{path, note})
	return path, note
}

func chooseJobClient(refciPath string) (path, note string) {
	light, note := lightbin.Beside(refciPath, JobClientName)
	if light == "" {
		return "", note
	}
	// refci-job runs the full refci it finds beside its own file.
	real, err := filepath.EvalSymlinks(light)
	if err != nil {
		return "", fmt.Sprintf("%s: %v", light, err)
	}
	beside, err1 := os.Stat(filepath.Join(filepath.Dir(real), "refci"))
	full, err2 := os.Stat(refciPath)
	if err1 != nil || err2 != nil || !os.SameFile(beside, full) {
		return "", fmt.Sprintf("%s is %s, and the refci beside that is not %s", light, real, refciPath)
	}
	light = real
	if ok, note := lightbin.OfThisBuild(light, jobClientPackage); !ok {
		return "", note
	}
	return light, ""
}
