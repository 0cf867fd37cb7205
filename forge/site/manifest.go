package site

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"regexp"
	"sync"
	"time"

	"refci.dev/refci/queue"
	"refci.dev/refci/render"
)

// The manifest's runs and commits (format 5) are kept beside
// manifest.json in a binary file of their own, manifest-runs-<random>.bin,
// which manifest.json names: decoding and encoding 100,000 summaries as
// JSON took over a second each, which an incremental build cannot
// afford; this file takes tens of milliseconds. A new one is written
// beside the old under a new name, and manifest.json, replaced after it,
// is what makes it the site's.
//
// Layout: the magic line, then the runs (a count, then each summary's
// fields in runFields' order), then the commits (a count, then each id,
// subject, author and date). A string is its length (uvarint) and its
// bytes; a number a varint; a time 0 for the zero time, else 1 and its
// Unix nanoseconds.
const runsMagic = "refci site runs 1\n"

// runsFileName is the shape of the runs file's name: nothing read from
// manifest.json names another file.
var runsFileName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^manifest-runs-[a-z0-9]{1,16}\.bin$`) })

var errRunsFile = errors.New("the manifest's runs file is damaged")

// castagnoli is made at its first use, not at every start of refci.
var castagnoli = sync.OnceValue(func() *crc32.Table { return crc32.MakeTable(crc32.Castagnoli) })

type encoder struct{ b []byte }

func (e *encoder) str(s string) {
	e.b = binary.AppendUvarint(e.b, uint64(len(s)))
	e.b = append(e.b, s...)
}
func (e *encoder) num(n int64) { e.b = binary.AppendVarint(e.b, n) }
func (e *encoder) time(t time.Time) {
	if t.IsZero() {
		e.b = append(e.b, 0)
		return
	}
	e.b = append(e.b, 1)
	e.num(t.UnixNano())
}

// summary appends s. Every field of render.RunSummary but NotLatest
// (which each build decides) is kept; TestRunsFileKeepsEveryField says
// when one is added.
func (e *encoder) summary(s *render.RunSummary) {
	for _, f := range []string{s.Ref, s.Commit, s.Target, s.TargetRef, s.Request, s.Run, string(s.State), s.Reason} {
		e.str(f)
	}
	e.time(s.Started)
	e.num(s.DurationMS)
	e.num(int64(len(s.FailedJobs)))
	for _, j := range s.FailedJobs {
		e.str(j)
	}
	e.str(s.Href)
	e.num(int64(s.Attempt))
	for _, f := range []string{s.Subject, s.Author, s.PreviousRun, s.LostTo, s.Verdict.Kind, s.Verdict.By, s.Verdict.Why} {
		e.str(f)
	}
}

type decoder struct {
	s   string // the file, as one string: every field read is a part of it
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint([]byte(d.s[:min(len(d.s), binary.MaxVarintLen64)]))
	if n <= 0 {
		d.err = errRunsFile
		return 0
	}
	d.s = d.s[n:]
	return v
}

func (d *decoder) num() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint([]byte(d.s[:min(len(d.s), binary.MaxVarintLen64)]))
	if n <= 0 {
		d.err = errRunsFile
		return 0
	}
	d.s = d.s[n:]
	return v
}

func (d *decoder) str() string {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.s)) {
		d.err = errRunsFile
		return ""
	}
	v := d.s[:n]
	d.s = d.s[n:]
	return v
}

func (d *decoder) time() time.Time {
	if d.err != nil || len(d.s) == 0 {
		d.err = errRunsFile
		return time.Time{}
	}
	tag := d.s[0]
	d.s = d.s[1:]
	if tag == 0 {
		return time.Time{}
	}
	return time.Unix(0, d.num()).UTC()
}

func (d *decoder) summary() render.RunSummary {
	var s render.RunSummary
	for _, f := range []*string{&s.Ref, &s.Commit, &s.Target, &s.TargetRef, &s.Request, &s.Run} {
		*f = d.str()
	}
	s.State = queue.State(d.str())
	s.Reason = d.str()
	s.Started = d.time()
	s.DurationMS = d.num()
	if n := d.num(); n > 0 && n <= int64(len(d.s)) {
		s.FailedJobs = make([]string, n)
		for i := range s.FailedJobs {
			s.FailedJobs[i] = d.str()
		}
	} else if n != 0 {
		d.err = errRunsFile
	}
	s.Href = d.str()
	s.Attempt = int(d.num())
	for _, f := range []*string{&s.Subject, &s.Author, &s.PreviousRun, &s.LostTo, &s.Verdict.Kind, &s.Verdict.By, &s.Verdict.Why} {
		*f = d.str()
	}
	return s
}

// encodeRuns encodes the runs and commits of man, and returns each run's
// hash (of its encoding), by run ref: what a list page is made of.
func encodeRuns(man *manifest) ([]byte, map[string]uint64) {
	// In the maps' order: the file need not be sorted, and sorting
	// 100,000 refs costs more than writing them.
	e := &encoder{b: make([]byte, 0, len(man.Runs)*400+1024)}
	e.b = append(e.b, runsMagic...)
	e.num(int64(len(man.Runs)))
	hashes := make(map[string]uint64, len(man.Runs))
	for ref, s := range man.Runs {
		s.Ref = ref // the key is what the site holds (format 4 may lack it)
		at := len(e.b)
		e.summary(&s)
		sum := e.b[at:]
		// CRC-32C (in hardware) of each half: a run's hash for its pages'
		// fingerprints, 30 MB at 100,000 runs.
		hashes[ref] = uint64(crc32.Checksum(sum[:len(sum)/2], castagnoli()))<<32 | uint64(crc32.Checksum(sum[len(sum)/2:], castagnoli()))
	}
	e.num(int64(len(man.Commits)))
	for id, c := range man.Commits {
		e.str(id)
		e.str(c.Subject)
		e.str(c.Author)
		e.time(c.Date)
	}
	return e.b, hashes
}

// decodeRuns fills the runs and commits of man from a runs file.
func decodeRuns(raw []byte, man *manifest) error {
	d := &decoder{s: string(raw)}
	if len(d.s) < len(runsMagic) || d.s[:len(runsMagic)] != runsMagic {
		return errRunsFile
	}
	d.s = d.s[len(runsMagic):]
	n := d.num()
	if n < 0 || n > int64(len(d.s)) {
		return errRunsFile
	}
	runs := make(map[string]render.RunSummary, n)
	for i := int64(0); i < n && d.err == nil; i++ {
		s := d.summary()
		runs[s.Ref] = s
	}
	m := d.num()
	if m < 0 || m > int64(len(d.s)) {
		return errRunsFile
	}
	commits := make(map[string]render.CommitInfo, m)
	for i := int64(0); i < m && d.err == nil; i++ {
		id := d.str()
		commits[id] = render.CommitInfo{Subject: d.str(), Author: d.str(), Date: d.time()}
	}
	if d.err != nil {
		return d.err
	}
	if len(d.s) != 0 {
		return errRunsFile
	}
	man.Runs, man.Commits = runs, commits
	return nil
}
