package site

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"refci.dev/refci/queue"
	"refci.dev/refci/render"
)

// The manifest's runs and commits (format 5 and 6) are kept beside
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
//
// Format 6 adds the delta, manifest-runs-<random>.delta beside the runs
// file of the same name: what each build changed (runs and commits set
// or removed) is appended to it as one record, so that a build after one
// new run writes a few hundred bytes instead of every summary again. The
// runs file is written anew, with an empty delta, only when the delta
// grows past a quarter of it (compactAt). manifest.json says how many
// bytes of the delta are the site's (delta_len): it is replaced after
// the append, so a build stopped in between leaves bytes beyond it,
// which the next build ignores and writes over.
//
// Delta layout: the magic line, then records, each its payload's length
// (uvarint), the payload and its CRC-32C (4 bytes, little-endian). A
// payload is a list of operations: 'r' and a summary (set a run), 'x'
// and a ref (remove a run), 'c' and a commit as in the runs file (set a
// commit), 'y' and an id (remove a commit).
//
// Every summary the files hold is true of its run ref's commit: a build
// checks each against the refs and renders again the runs whose commit
// differs or that are missing. So a delta cut short (a damaged disk,
// someone's truncate) loses nothing but work: its whole records are
// applied, the runs it forgot are rendered again, and the runs file is
// written anew.
const (
	runsMagic  = "refci site runs 1\n"
	deltaMagic = "refci site delta 1\n"
)

// runsFileName is the shape of the runs file's name: nothing read from
// manifest.json names another file.
var runsFileName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^manifest-runs-[a-z0-9]{1,16}\.bin$`) })

// deltaFileName is the shape of the delta's name.
var deltaFileName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^manifest-runs-[a-z0-9]{1,16}\.delta$`) })

// deltaOf names the delta of the runs file runs.
func deltaOf(runs string) string { return strings.TrimSuffix(runs, ".bin") + ".delta" }

// compactAt says whether a delta of delta bytes beside a runs file of
// base bytes is large enough for both to be written anew as one runs
// file: past a quarter of the runs file (reading it costs about what
// reading that part of the runs file does), and past 64 KiB, so that a
// small site is not rewritten at every build.
func compactAt(delta, base int64) bool { return delta > 64<<10 && delta > base/4 }

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

// runHash is a run's hash, of its summary's encoding enc: what its list
// pages' fingerprints are made of. CRC-32C (in hardware) of each half.
func runHash(enc []byte) uint64 {
	return uint64(crc32.Checksum(enc[:len(enc)/2], castagnoli()))<<32 | uint64(crc32.Checksum(enc[len(enc)/2:], castagnoli()))
}

// encodeRuns encodes the runs and commits of man as a runs file.
func encodeRuns(man *manifest) []byte {
	// In the maps' order: the file need not be sorted, and sorting
	// 100,000 refs costs more than writing them.
	e := &encoder{b: make([]byte, 0, len(man.Runs)*400+1024)}
	e.b = append(e.b, runsMagic...)
	e.num(int64(len(man.Runs)))
	for ref, s := range man.Runs {
		s.Ref = ref // the key is what the site holds (format 4 may lack it)
		e.summary(&s)
	}
	e.num(int64(len(man.Commits)))
	for id, c := range man.Commits {
		e.commit(id, c)
	}
	return e.b
}

func (e *encoder) commit(id string, c render.CommitInfo) {
	e.str(id)
	e.str(c.Subject)
	e.str(c.Author)
	e.time(c.Date)
}

// decodeRuns fills the runs, commits and run hashes of man from a runs
// file.
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
	hashes := make(map[string]uint64, n)
	for i := int64(0); i < n && d.err == nil; i++ {
		at := len(raw) - len(d.s)
		s := d.summary()
		if d.err == nil {
			runs[s.Ref] = s
			hashes[s.Ref] = runHash(raw[at : len(raw)-len(d.s)])
		}
	}
	m := d.num()
	if m < 0 || m > int64(len(d.s)) {
		return errRunsFile
	}
	commits := make(map[string]render.CommitInfo, m)
	for i := int64(0); i < m && d.err == nil; i++ {
		id, c := d.commit()
		commits[id] = c
	}
	if d.err != nil {
		return d.err
	}
	if len(d.s) != 0 {
		return errRunsFile
	}
	man.Runs, man.Commits, man.hashes = runs, commits, hashes
	return nil
}

func (d *decoder) commit() (string, render.CommitInfo) {
	id := d.str()
	return id, render.CommitInfo{Subject: d.str(), Author: d.str(), Date: d.time()}
}

// The operations of a delta record.
const (
	opSetRun       = 'r'
	opRemoveRun    = 'x'
	opSetCommit    = 'c'
	opRemoveCommit = 'y'
)

// deltaRecord encodes what changed in man since it was read or last
// written (its dirty runs and commits) as one delta record; nil when
// nothing did.
func deltaRecord(man *manifest) []byte {
	if len(man.dirtyRuns) == 0 && len(man.dirtyCommits) == 0 {
		return nil
	}
	e := &encoder{b: make([]byte, 0, len(man.dirtyRuns)*400+len(man.dirtyCommits)*100)}
	for ref := range man.dirtyRuns {
		if s, ok := man.Runs[ref]; ok {
			s.Ref = ref
			e.b = append(e.b, opSetRun)
			e.summary(&s)
		} else {
			e.b = append(e.b, opRemoveRun)
			e.str(ref)
		}
	}
	for id := range man.dirtyCommits {
		if c, ok := man.Commits[id]; ok {
			e.b = append(e.b, opSetCommit)
			e.commit(id, c)
		} else {
			e.b = append(e.b, opRemoveCommit)
			e.str(id)
		}
	}
	rec := binary.AppendUvarint(make([]byte, 0, len(e.b)+16), uint64(len(e.b)))
	rec = append(rec, e.b...)
	return binary.LittleEndian.AppendUint32(rec, crc32.Checksum(e.b, castagnoli()))
}

// applyDelta applies the records of a delta, raw, to man (read from its
// runs file). It applies whole records only, and reports whether raw was
// one whole delta: false when it ends in a part of a record, a record's
// checksum is wrong, or it does not start as a delta does.
func applyDelta(raw []byte, man *manifest) bool {
	if len(raw) < len(deltaMagic) || string(raw[:len(deltaMagic)]) != deltaMagic {
		return false
	}
	rest := raw[len(deltaMagic):]
	for len(rest) > 0 {
		n, k := binary.Uvarint(rest)
		if k <= 0 || n > uint64(len(rest)-k) || uint64(len(rest)-k)-n < 4 {
			return false
		}
		payload := rest[k : k+int(n)]
		if binary.LittleEndian.Uint32(rest[k+int(n):]) != crc32.Checksum(payload, castagnoli()) {
			return false
		}
		if !applyRecord(payload, man) {
			return false
		}
		rest = rest[k+int(n)+4:]
	}
	return true
}

// applyRecord applies one record's operations to man, all of them or,
// when one cannot be read, none.
func applyRecord(payload []byte, man *manifest) bool {
	type op struct {
		kind byte
		key  string
		sum  render.RunSummary
		hash uint64
		c    render.CommitInfo
	}
	var ops []op
	d := &decoder{s: string(payload)}
	for len(d.s) > 0 && d.err == nil {
		o := op{kind: d.s[0]}
		d.s = d.s[1:]
		switch o.kind {
		case opSetRun:
			at := len(payload) - len(d.s)
			o.sum = d.summary()
			o.key = o.sum.Ref
			if d.err == nil {
				o.hash = runHash(payload[at : len(payload)-len(d.s)])
			}
		case opRemoveRun, opRemoveCommit:
			o.key = d.str()
		case opSetCommit:
			o.key, o.c = d.commit()
		default:
			return false
		}
		ops = append(ops, o)
	}
	if d.err != nil {
		return false
	}
	for _, o := range ops {
		switch o.kind {
		case opSetRun:
			man.Runs[o.key], man.hashes[o.key] = o.sum, o.hash
		case opRemoveRun:
			delete(man.Runs, o.key)
			delete(man.hashes, o.key)
		case opSetCommit:
			man.Commits[o.key] = o.c
		case opRemoveCommit:
			delete(man.Commits, o.key)
		}
	}
	return true
}

// setRun records the summary of the run ref.
func (m *manifest) setRun(ref string, s render.RunSummary) {
	s.Ref = ref
	e := encoder{b: make([]byte, 0, 512)}
	e.summary(&s)
	m.Runs[ref], m.hashes[ref] = s, runHash(e.b)
	m.dirtyRuns[ref] = true
}

// removeRun forgets the run ref.
func (m *manifest) removeRun(ref string) {
	delete(m.Runs, ref)
	delete(m.hashes, ref)
	m.dirtyRuns[ref] = true
}

// setCommit records the description of the commit id.
func (m *manifest) setCommit(id string, c render.CommitInfo) {
	m.Commits[id] = c
	m.dirtyCommits[id] = true
}

// removeCommit forgets the commit id.
func (m *manifest) removeCommit(id string) {
	delete(m.Commits, id)
	m.dirtyCommits[id] = true
}

// changed reports whether man holds changes not written yet, or must be
// written anew.
func (m *manifest) changed() bool {
	return m.rewrite || m.relist || m.RunsFile == "" || len(m.dirtyRuns) > 0 || len(m.dirtyCommits) > 0
}

// readManifest reads the site's manifest when it is of this format (or
// of format 4, 5 or 6) and was made with the keys kid; otherwise, or when
// it cannot be read, it returns an empty one: the site is built anew.
func readManifest(root *os.Root, kid string) manifest {
	empty := manifest{Format: siteFormat, Keys: kid, Runs: map[string]render.RunSummary{}, Commits: map[string]render.CommitInfo{}}
	empty.init()
	raw, err := root.ReadFile(manifestFile)
	if err != nil {
		return empty
	}
	var m manifest
	if json.Unmarshal(raw, &m) != nil || m.Keys != kid {
		return empty
	}
	switch m.Format {
	case 4: // taken up: its runs' pages are kept, its lists written anew
		if m.Runs == nil {
			return empty
		}
		m.Format, m.Pages, m.RunsFile, m.DeltaLen = siteFormat, nil, "", 0
		m.init()
		for ref, s := range m.Runs {
			m.setRun(ref, s)
		}
		m.rewrite, m.relist = true, true
	case 5, 6, siteFormat:
		if !runsFileName().MatchString(m.RunsFile) || m.DeltaLen < 0 {
			return empty
		}
		base, err := root.ReadFile(m.RunsFile)
		if err != nil || decodeRuns(base, &m) != nil {
			return empty
		}
		m.init()
		m.baseLen = int64(len(base))
		if m.DeltaLen > 0 {
			// Bytes past DeltaLen are a stopped build's: not the site's.
			delta, err := readPrefix(root, deltaOf(m.RunsFile), m.DeltaLen)
			if !applyDelta(delta, &m) || err != nil {
				m.rewrite = true // what it lacks is rendered again
			}
		}
		// Format 5 is format 6 with no delta, and format 6 is format 7
		// with pages that may link lists that are gone: written anew.
		m.relist = m.Format < siteFormat
		m.Format = siteFormat
	default:
		return empty
	}
	if m.Commits == nil {
		m.Commits = map[string]render.CommitInfo{}
	}
	return m
}

// readPrefix reads the first n bytes of the file name under root, or as
// many as it has (with an error when fewer).
func readPrefix(root *os.Root, name string, n int64) ([]byte, error) {
	f, err := root.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Not a buffer of n bytes: n is read from manifest.json.
	buf, err := io.ReadAll(io.LimitReader(f, n))
	if err == nil && int64(len(buf)) < n {
		err = io.ErrUnexpectedEOF
	}
	return buf, err
}

// init makes the maps of a manifest's bookkeeping.
func (m *manifest) init() {
	if m.hashes == nil {
		m.hashes = make(map[string]uint64, len(m.Runs))
	}
	m.dirtyRuns, m.dirtyCommits = map[string]bool{}, map[string]bool{}
}

// writeManifest makes man's changes the site's: it appends them to the
// delta as one record, or, when the delta would grow past compactAt (or
// man must be written anew), writes a new runs file under a new name;
// then it replaces manifest.json, which names the runs file and says how
// long the delta is. After a new runs file, every other runs file and
// delta (the ones it replaced, any a stopped build left) goes.
func writeManifest(root *os.Root, man *manifest) error {
	rec := deltaRecord(man)
	start := man.DeltaLen
	if start == 0 {
		start = int64(len(deltaMagic))
	}
	if man.rewrite || man.RunsFile == "" || compactAt(start+int64(len(rec)), man.baseLen) {
		encoded := encodeRuns(man)
		man.RunsFile = "manifest-runs-" + tmpSuffix() + ".bin"
		if err := writeAtomic(root, man.RunsFile, encoded); err != nil {
			return err
		}
		man.baseLen, man.DeltaLen, man.rewrite = int64(len(encoded)), 0, false
		man.init()
		if err := writeHead(root, man); err != nil {
			return err
		}
		removeOtherRunsFiles(root, man.RunsFile)
		return nil
	}
	if len(rec) > 0 {
		f, err := root.OpenFile(deltaOf(man.RunsFile), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		if man.DeltaLen == 0 {
			rec = append([]byte(deltaMagic), rec...)
		}
		// What a stopped build appended past DeltaLen is written over.
		_, werr := f.WriteAt(rec, man.DeltaLen)
		if err := errors.Join(werr, f.Truncate(man.DeltaLen+int64(len(rec))), f.Close()); err != nil {
			return err
		}
		man.DeltaLen += int64(len(rec))
		man.init()
	}
	return writeHead(root, man)
}

// writeHead replaces manifest.json with man's, without its runs and
// commits.
func writeHead(root *os.Root, man *manifest) error {
	head := *man
	head.Runs, head.Commits = nil, nil
	raw, err := json.Marshal(head)
	if err != nil {
		return err
	}
	return writeAtomic(root, manifestFile, raw)
}

// removeOtherRunsFiles removes every runs file and delta in the site but
// keep and its delta.
func removeOtherRunsFiles(root *os.Root, keep string) {
	f, err := root.Open(".")
	if err != nil {
		return
	}
	names, _ := f.Readdirnames(-1)
	f.Close()
	for _, n := range names {
		if n != keep && n != deltaOf(keep) && (runsFileName().MatchString(n) || deltaFileName().MatchString(n)) {
			root.Remove(n)
		}
	}
}
