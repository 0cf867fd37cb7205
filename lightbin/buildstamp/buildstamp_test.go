package buildstamp

import (
	"runtime/debug"
	"testing"
)

// The build stamps the light binaries are compared by.
func TestBuildStamp(t *testing.T) {
	vcs := func(kv ...string) *debug.BuildInfo {
		bi := &debug.BuildInfo{Main: debug.Module{Path: "refci.dev/refci", Version: "(devel)"}}
		for i := 0; i < len(kv); i += 2 {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
		}
		return bi
	}
	released := &debug.BuildInfo{Main: debug.Module{Path: "refci.dev/refci", Version: "v1.2.3"}}
	for _, c := range []struct {
		bi   *debug.BuildInfo
		want string
	}{
		{nil, "unknown build"},
		{vcs(), "unknown build"},
		{vcs("vcs.revision", "abc"), "commit abc"},
		{vcs("vcs.revision", "abc", "vcs.modified", "true"), "commit abc+dirty"},
		{vcs("vcs.revision", "abc", "vcs.modified", "false"), "commit abc"},
		{released, "module refci.dev/refci@v1.2.3"},
	} {
		if got := Of(c.bi); got != c.want {
			t.Errorf("Of(%+v) = %q, want %q", c.bi, got, c.want)
		}
	}
}
