package jobwire

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseShellLine(t *testing.T) {
	for _, c := range []struct {
		line string
		want ShellEvent
		err  string
	}{
		{"refci/1 start build", ShellEvent{Op: ShellStart, Name: "build"}, ""},
		{"refci/1 start build ", ShellEvent{Op: ShellStart, Name: "build"}, ""},
		{"refci/1 start test a,b", ShellEvent{Op: ShellStart, Name: "test", Needs: []string{"a", "b"}}, ""},
		{"refci/1 skip test a", ShellEvent{Op: ShellSkip, Name: "test", Needs: []string{"a"}}, ""},
		{"refci/1 end build 0", ShellEvent{Op: ShellEnd, Name: "build"}, ""},
		{"refci/1 end build 255", ShellEvent{Op: ShellEnd, Name: "build", Code: 255}, ""},
		{"refci/1 end build 256", ShellEvent{}, `exit status "256"`},
		{"refci/1 end build +1", ShellEvent{}, `exit status "+1"`},
		{"refci/1 end build", ShellEvent{}, "wrong number of words"},
		{"refci/1 skip test", ShellEvent{}, "wrong number of words"},
		{"refci/1 skip test ", ShellEvent{}, "no needs"},
		{"refci/1 start a b c", ShellEvent{}, "wrong number of words"},
		{"refci/1 stop a", ShellEvent{}, `unknown event "stop"`},
		{"refci/2 start a", ShellEvent{}, "protocol refci/2"},
		{"start a", ShellEvent{}, "not a control line"},
		{"", ShellEvent{}, "not a control line"},
	} {
		got, err := ParseShellLine(c.line)
		switch {
		case c.err == "" && (err != nil || !reflect.DeepEqual(got, c.want)):
			t.Errorf("%q: %+v, %v; want %+v", c.line, got, err, c.want)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%q: error %v, want one saying %q", c.line, err, c.err)
		}
	}
}

// The library's lines fit ShellMaxLine and the protocol version: a
// change to one must be made to the other.
func TestShellLibrarySpeaksThisVersion(t *testing.T) {
	for _, ev := range []string{"start", "end", "skip"} {
		if !strings.Contains(ShellLibrary, "printf '"+shellLinePrefix+ev+" ") {
			t.Errorf("the library does not write %q lines", shellLinePrefix+ev)
		}
	}
	if !strings.Contains(ShellLibrary, "-gt 4000") || ShellMaxLine != 4000 {
		t.Error("the library's line limit is not ShellMaxLine")
	}
}
