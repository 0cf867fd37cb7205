//go:build linux

package shim

import (
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseStat(t *testing.T) {
	line := "4242 (we)ird (name) ) R 17 4240 4200 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654321 1000 10 18446744073709551615\n"
	p, err := ParseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	want := ProcInfo{Pid: 4242, PPid: 17, Pgrp: 4240, Sid: 4200, State: 'R', Start: 987654321}
	if p != want {
		t.Errorf("got %+v, want %+v", p, want)
	}
	for _, bad := range []string{"", "12 (x", "12 (x) R 1 2", "x (y) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20"} {
		if _, err := ParseStat([]byte(bad)); err == nil {
			t.Errorf("ParseStat(%q): no error", bad)
		}
	}
	self, err := ReadStat(os.Getpid())
	if err != nil || self.Pid != os.Getpid() || self.PPid != os.Getppid() || self.Pgrp != unix.Getpgrp() || self.Start == 0 {
		t.Errorf("own stat %+v, %v", self, err)
	}
}

func TestIsolationDecision(t *testing.T) {
	for _, tc := range []struct {
		name      string
		startErr  error
		require   bool
		fallback  bool
		errSubstr string
	}{
		{"started", nil, false, false, ""},
		{"started, required", nil, true, false, ""},
		{"max_user_namespaces 0", syscall.ENOSPC, false, true, ""},
		{"unprivileged_userns_clone 0", syscall.EPERM, false, true, ""},
		{"no CONFIG_USER_NS", syscall.EINVAL, false, true, ""},
		{"unavailable, required", syscall.EPERM, true, false, "--require-isolation"},
		{"other failure", syscall.ENOMEM, false, false, "cannot allocate memory"},
		{"other failure, required", syscall.ENOMEM, true, false, "cannot allocate memory"},
	} {
		fallback, note, err := isolationDecision(tc.startErr, tc.require)
		if fallback != tc.fallback || (fallback != (note != "")) {
			t.Errorf("%s: fallback %v, note %q", tc.name, fallback, note)
		}
		if (err == nil) != (tc.errSubstr == "") || err != nil && !strings.Contains(err.Error(), tc.errSubstr) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.errSubstr)
		}
		if tc.require && tc.errSubstr == "--require-isolation" && !errors.Is(err, errIsolationUnavailable) {
			t.Errorf("%s: %v does not match errIsolationUnavailable", tc.name, err)
		}
	}
}

// --protocol alone prints Protocol; with anything else it is a usage
// error, as for a shim that predates it.
func TestProtocolArg(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	stdout, stderr := os.Stdout, os.Stderr
	os.Stdout, os.Stderr = w, null
	code := Main([]string{ProtocolArg})
	code2 := Main([]string{ProtocolArg, "--", "/bin/true"})
	os.Stdout, os.Stderr = stdout, stderr
	w.Close()
	b := make([]byte, 100)
	n, _ := r.Read(b)
	r.Close()
	if code != 0 || string(b[:n]) != Identity()+"\n" {
		t.Errorf("Main(--protocol) = %d, printed %q", code, b[:n])
	}
	if code2 != 2 {
		t.Errorf("Main(--protocol -- /bin/true) = %d, want 2 (usage)", code2)
	}
}
