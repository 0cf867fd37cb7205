//go:build linux

package shim

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
)

// Reading /proc: the helpers the shim walks its process tree with, which
// the worker's own sweeps (worker/proc/reap_linux.go) use as well.

// ProcReads counts the files and directories under /proc that this
// process has read (these helpers, and the worker's sweeps and fast path);
// tests and benchmarks look at it.
var ProcReads atomic.Int64

// ReadProcChildren returns the children of every thread of process pid
// (/proc/<pid>/task/<tid>/children, CONFIG_PROC_CHILDREN) and the ids of
// the threads, sorted. A thread that exits meanwhile is skipped (callers
// that must not miss its children compare the threads before and after);
// a kernel without the children files is an error.
func ReadProcChildren(pid int) (kids, tids []int, err error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task/"
	tids, err = ReadTids(dir)
	if err != nil {
		return nil, nil, err
	}
	for _, tid := range tids {
		ProcReads.Add(1)
		b, err := os.ReadFile(dir + strconv.Itoa(tid) + "/children")
		if err != nil {
			if _, serr := os.Stat(dir + strconv.Itoa(tid)); serr != nil {
				continue // the thread is gone
			}
			return nil, nil, err
		}
		for _, f := range strings.Fields(string(b)) {
			k, err := strconv.Atoi(f)
			if err != nil {
				return nil, nil, fmt.Errorf("%schildren: %q: %w", dir, f, err)
			}
			kids = append(kids, k)
		}
	}
	return kids, tids, nil
}

// ReadTids returns the thread ids listed in dir (/proc/<pid>/task/),
// sorted.
func ReadTids(dir string) ([]int, error) {
	ProcReads.Add(1)
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return nil, err
	}
	tids := make([]int, 0, len(names))
	for _, n := range names {
		if tid, err := strconv.Atoi(n); err == nil {
			tids = append(tids, tid)
		}
	}
	slices.Sort(tids)
	return tids, nil
}

// ProcKey identifies a process across pid reuse.
type ProcKey struct {
	Pid   int
	Start uint64
}

// ProcInfo is what a sweep (and the shim) needs from /proc/<pid>/stat.
type ProcInfo struct {
	Pid, PPid, Pgrp, Sid int
	State                byte
	Start                uint64 // start time, clock ticks after boot
}

// Key identifies p across pid reuse.
func (p *ProcInfo) Key() ProcKey { return ProcKey{p.Pid, p.Start} }

// ParseStat parses the contents of /proc/<pid>/stat. The command name is in
// parentheses and may itself contain spaces and parentheses, so the fields
// are counted from the last ')'.
func ParseStat(b []byte) (ProcInfo, error) {
	var p ProcInfo
	open := bytes.IndexByte(b, '(')
	end := bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return p, errors.New("malformed stat")
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:open])))
	if err != nil {
		return p, fmt.Errorf("malformed stat: pid: %w", err)
	}
	f := strings.Fields(string(b[end+1:]))
	// f[0] is field 3 (state); start time is field 22.
	if len(f) < 20 || len(f[0]) != 1 {
		return p, errors.New("malformed stat: too few fields")
	}
	p.Pid = pid
	p.State = f[0][0]
	ints := [3]*int{&p.PPid, &p.Pgrp, &p.Sid}
	for i, dst := range ints {
		if *dst, err = strconv.Atoi(f[1+i]); err != nil {
			return p, fmt.Errorf("malformed stat: field %d: %w", 4+i, err)
		}
	}
	if p.Start, err = strconv.ParseUint(f[19], 10, 64); err != nil {
		return p, fmt.Errorf("malformed stat: start time: %w", err)
	}
	return p, nil
}

// ReadStat reads and parses /proc/<pid>/stat.
func ReadStat(pid int) (ProcInfo, error) {
	ProcReads.Add(1)
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ProcInfo{}, err
	}
	return ParseStat(b)
}

// ListProcs reads the stat of every process. Processes that vanish while
// it reads are skipped.
func ListProcs() (map[int]*ProcInfo, error) {
	ProcReads.Add(1)
	d, err := os.Open("/proc")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	procs := make(map[int]*ProcInfo, len(names))
	for _, n := range names {
		if n == "" || n[0] < '0' || n[0] > '9' {
			continue
		}
		pid, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		p, err := ReadStat(pid)
		if err != nil {
			continue
		}
		procs[pid] = &p
	}
	return procs, nil
}
