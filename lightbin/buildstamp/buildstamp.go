// Package buildstamp names the build a Go binary comes from, so that
// refci and its light binaries can tell whether they are of one build.
// It is a package of its own, importing only runtime/debug, because the
// per-job shim (cmd/refci-shim) needs it and must stay small.
package buildstamp

import "runtime/debug"

// Of names the build bi describes: "commit REV" (with "+dirty"
// for a modified tree), "module PATH@VERSION" for a released module, or
// "unknown build" (bi nil, or built without VCS stamps or a version).
// Two binaries of one build have the same stamp.
func Of(bi *debug.BuildInfo) string {
	if bi == nil {
		return "unknown build"
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	switch {
	case rev != "" && dirty:
		return "commit " + rev + "+dirty"
	case rev != "":
		return "commit " + rev
	case bi.Main.Version != "" && bi.Main.Version != "(devel)":
		return "module " + bi.Main.Path + "@" + bi.Main.Version
	}
	return "unknown build"
}
