package worker

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// expectedCapped is what Finish must produce for stream under capBytes.
func expectedCapped(stream []byte, capBytes int64) ([]byte, bool) {
	if int64(len(stream)) <= capBytes {
		return stream, false
	}
	head := capBytes / 2
	tail := capBytes - head
	var b bytes.Buffer
	b.Write(stream[:head])
	fmt.Fprintf(&b, "\n[refci: %d bytes omitted; the log was capped at %d bytes, head and tail kept]\n", int64(len(stream))-capBytes, capBytes)
	b.Write(stream[int64(len(stream))-tail:])
	return b.Bytes(), true
}

func finishAndRead(t *testing.T, l *CappedLog) ([]byte, string, int64, int64, bool) {
	t.Helper()
	fl, err := l.Finish()
	if err != nil {
		t.Fatal(err)
	}
	got := fl.Data
	if fl.Path != "" {
		if got, err = os.ReadFile(fl.Path); err != nil {
			t.Fatal(err)
		}
	}
	if int64(len(got)) != fl.Size {
		t.Errorf("size %d, the log has %d bytes", fl.Size, len(got))
	}
	return got, fl.Path, fl.Size, fl.Total, fl.Truncated
}

func checkCapped(t *testing.T, capBytes int64, writes [][]byte) {
	t.Helper()
	dir := t.TempDir()
	l, err := NewCappedLog(dir, capBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var stream []byte
	for _, w := range writes {
		n, err := l.Write(w)
		if err != nil || n != len(w) {
			t.Fatalf("Write(%d bytes) = %d, %v", len(w), n, err)
		}
		stream = append(stream, w...)
		if l.Total() != int64(len(stream)) {
			t.Fatalf("Total %d, want %d", l.Total(), len(stream))
		}
	}
	got, _, _, total, truncated := finishAndRead(t, l)
	want, wantTrunc := expectedCapped(stream, capBytes)
	if !bytes.Equal(got, want) || total != int64(len(stream)) || truncated != wantTrunc {
		t.Fatalf("cap %d, %d writes, %d bytes: got %d bytes truncated=%v total=%d; want %d bytes truncated=%v\ngot  %q\nwant %q",
			capBytes, len(writes), len(stream), len(got), truncated, total, len(want), wantTrunc, clip(got), clip(want))
	}
}

func clip(b []byte) []byte {
	if len(b) > 300 {
		return b[:300]
	}
	return b
}

func TestCappedLogSmallRoundTrip(t *testing.T) {
	checkCapped(t, 1024, nil)
	checkCapped(t, 1024, [][]byte{[]byte("hello\n"), {}, []byte("world\n")})
	// Exactly the cap, in pieces that cross the head/tail boundary.
	checkCapped(t, 1024, [][]byte{bytes.Repeat([]byte("a"), 500), bytes.Repeat([]byte("b"), 24), bytes.Repeat([]byte("c"), 500)})
	checkCapped(t, 1024, [][]byte{bytes.Repeat([]byte("x"), 1024)})
}

func TestCappedLogOverCap(t *testing.T) {
	dir := t.TempDir()
	l, err := NewCappedLog(dir, 10)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, s := range []string{"0123", "456789ab", "cdefghij", "klm"} {
		l.Write([]byte(s))
	}
	got, _, size, total, truncated := finishAndRead(t, l)
	want := "01234\n[refci: 13 bytes omitted; the log was capped at 10 bytes, head and tail kept]\nijklm"
	if string(got) != want || total != 23 || !truncated || size != int64(len(want)) {
		t.Fatalf("got %q (total %d, truncated %v), want %q", got, total, truncated, want)
	}
}

func TestCappedLogBinaryVerbatim(t *testing.T) {
	var b []byte
	for i := range 3 * 256 {
		b = append(b, byte(i))
	}
	b = append(b, "\x1b[31mred\x1b[0m \xff\xfe\xc3 h\xc3\xa9llo \x00\x00\r\n"...)
	checkCapped(t, 4096, [][]byte{b})      // under the cap
	checkCapped(t, 100, [][]byte{b, b})    // over it, cut anywhere
	checkCapped(t, 1, [][]byte{b, {0xff}}) // a cap of one byte keeps only the last byte
}

func TestCappedLogRandomized(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, capBytes := range []int64{1, 2, 3, 7, 64, 100, 1000, 4097} {
		for range 20 {
			var writes [][]byte
			for range r.IntN(30) {
				n := r.IntN(int(3*capBytes) + 2)
				if r.IntN(4) == 0 {
					n = r.IntN(4)
				}
				w := make([]byte, n)
				for i := range w {
					w[i] = byte(r.Uint32())
				}
				writes = append(writes, w)
			}
			checkCapped(t, capBytes, writes)
		}
	}
}

func TestCappedLogDefaultCap(t *testing.T) {
	l, err := NewCappedLog(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 1<<12) // 64 KiB
	for range 256 {
		l.Write(chunk)
	}
	l.Write([]byte("!"))
	got, _, _, total, truncated := finishAndRead(t, l)
	marker := "\n[refci: 1 bytes omitted; the log was capped at 16777216 bytes, head and tail kept]\n"
	if total != 16<<20+1 || !truncated || len(got) != 16<<20+len(marker) || !bytes.Contains(got, []byte(marker)) || !bytes.HasSuffix(got, []byte("123456789abcdef!")) {
		t.Fatalf("total %d truncated %v len %d", total, truncated, len(got))
	}
}

func TestCappedLogLifecycle(t *testing.T) {
	dir := t.TempDir()
	l, err := NewCappedLog(dir, 8)
	if err != nil {
		t.Fatal(err)
	}
	l.Write([]byte("0123456789"))
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("want a head and a ring file, have %d files", len(ents))
	}
	fl, err := l.Finish()
	if err != nil {
		t.Fatal(err)
	}
	path := fl.Path
	if _, err := l.Write([]byte("x")); err == nil {
		t.Error("Write after Finish succeeded")
	}
	if _, err := l.Finish(); err == nil {
		t.Error("second Finish succeeded")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || filepath.Join(dir, ents[0].Name()) != path {
		t.Errorf("after Close: %v, want only the finished file %s", ents, path)
	}

	// Close without Finish leaves nothing.
	dir2 := t.TempDir()
	l2, err := NewCappedLog(dir2, 8)
	if err != nil {
		t.Fatal(err)
	}
	l2.Write([]byte("0123456789"))
	if err := l2.Close(); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(dir2); len(ents) != 0 {
		t.Errorf("after Close without Finish: %v", ents)
	}
	if _, err := l2.Write([]byte("x")); err == nil {
		t.Error("Write after Close succeeded")
	}
}

// TestCappedLogMemoryFlat pushes 1 GiB through a log capped at 1 MiB and
// checks the heap does not grow with it.
func TestCappedLogMemoryFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 1 GiB")
	}
	const (
		capBytes = 1 << 20
		chunk    = 1 << 20
		chunks   = 1024
		slack    = 16 << 20
	)
	buf := make([]byte, chunk)
	for i := range buf {
		buf[i] = byte(i*7 + i>>11)
	}
	last := make([]byte, chunk)
	for i := range last {
		last[i] = byte(i*13 + 5)
	}
	l, err := NewCappedLog(t.TempDir(), capBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	var before, now runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var peak uint64
	odd := []byte("an odd-sized start, so the ring wraps at odd offsets\n")
	l.Write(odd)
	for i := range chunks {
		b := buf
		if i == chunks-1 {
			b = last
		}
		if _, err := l.Write(b); err != nil {
			t.Fatal(err)
		}
		if i%64 == 0 {
			runtime.ReadMemStats(&now)
			peak = max(peak, now.HeapAlloc)
		}
	}
	fl, err := l.Finish()
	if err != nil {
		t.Fatal(err)
	}
	path, size, total, truncated := fl.Path, fl.Size, fl.Total, fl.Truncated
	runtime.ReadMemStats(&now)
	peak = max(peak, now.HeapAlloc)
	if peak > before.HeapAlloc+slack {
		t.Errorf("heap grew from %d to %d bytes", before.HeapAlloc, peak)
	}
	if now.Sys > before.Sys+slack {
		t.Errorf("memory from the OS grew from %d to %d bytes", before.Sys, now.Sys)
	}
	t.Logf("heap %d → peak %d, sys %d → %d", before.HeapAlloc, peak, before.Sys, now.Sys)

	wantTotal := int64(len(odd)) + chunks*chunk
	if total != wantTotal || !truncated {
		t.Fatalf("total %d truncated %v", total, truncated)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	marker := fmt.Sprintf("\n[refci: %d bytes omitted; the log was capped at %d bytes, head and tail kept]\n", wantTotal-capBytes, capBytes)
	wantHead := append(append([]byte{}, odd...), buf[:capBytes/2-len(odd)]...)
	if int64(len(got)) != size || len(got) != capBytes+len(marker) {
		t.Fatalf("size %d, file %d bytes", size, len(got))
	}
	if !bytes.Equal(got[:capBytes/2], wantHead) || string(got[capBytes/2:capBytes/2+len(marker)]) != marker || !bytes.Equal(got[capBytes/2+len(marker):], last[chunk-capBytes/2:]) {
		t.Error("head, marker or tail differ")
	}
}

// A short log makes no file at all; one that grows past memLogBytes moves
// to a file with nothing lost at the boundary, and snapshots agree.
func TestCappedLogShortStaysInMemory(t *testing.T) {
	dir := t.TempDir()
	l, err := NewCappedLog(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.Write([]byte("hello\n"))
	var snap bytes.Buffer
	if err := l.Snapshot(&snap); err != nil || snap.String() != "hello\n" {
		t.Fatalf("snapshot %q, %v", snap.String(), err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("a short log made %d files", len(ents))
	}
	got, path, _, total, truncated := finishAndRead(t, l)
	if path != "" || string(got) != "hello\n" || total != 6 || truncated {
		t.Errorf("finished as %q at %q, total %d, truncated %v", got, path, total, truncated)
	}

	// Across the boundary, in writes that straddle it.
	l2, err := NewCappedLog(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	var stream []byte
	for i := 0; len(stream) <= 3*memLogBytes; i++ {
		b := bytes.Repeat([]byte{byte('a' + i%26)}, 7001)
		if n, err := l2.Write(b); err != nil || n != len(b) {
			t.Fatalf("Write = %d, %v", n, err)
		}
		stream = append(stream, b...)
		if len(stream) > memLogBytes {
			if ents, _ := os.ReadDir(dir); len(ents) != 1 {
				t.Fatalf("at %d bytes: %d files, want the head file", len(stream), len(ents))
			}
		}
	}
	snap.Reset()
	if err := l2.Snapshot(&snap); err != nil || !bytes.Equal(snap.Bytes(), stream) {
		t.Fatalf("snapshot of %d bytes differs from the %d written (%v)", snap.Len(), len(stream), err)
	}
	got, path, _, _, _ = finishAndRead(t, l2)
	if path == "" || !bytes.Equal(got, stream) {
		t.Errorf("long log at %q: %d bytes, want the %d written", path, len(got), len(stream))
	}
}

// Tail reads the end of what was stored, from memory, the head file or
// the ring, without writing anything (it serves a full disk).
func TestCappedLogTail(t *testing.T) {
	for _, tc := range []struct {
		name     string
		capBytes int64
		total, n int
		want     int // bytes of the stream's end expected
		wantCut  bool
	}{
		{"in memory", 1 << 20, 1000, 100, 100, true},
		{"in memory, all", 1 << 20, 100, 1000, 100, false},
		{"head file", 1 << 20, 200 << 10, 1000, 1000, true},
		{"head and ring, not truncated", 300 << 10, 200 << 10, 100 << 10, 100 << 10, true},
		{"ring wrapped", 200 << 10, 900<<10 + 17, 50 << 10, 50 << 10, true},
		{"ring wrapped, more than the tail", 200 << 10, 900<<10 + 17, 150 << 10, 100 << 10, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := NewCappedLog(t.TempDir(), tc.capBytes)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			stream := make([]byte, tc.total)
			for i := range stream {
				stream[i] = byte('a' + i%23)
			}
			for p := stream; len(p) > 0; {
				k := min(len(p), 7001)
				if _, err := l.Write(p[:k]); err != nil {
					t.Fatal(err)
				}
				p = p[k:]
			}
			got, cut := l.Tail(tc.n)
			if want := stream[len(stream)-tc.want:]; !bytes.Equal(got, want) || cut != tc.wantCut {
				t.Errorf("Tail(%d): %d bytes (cut %v), want the last %d (cut %v)", tc.n, len(got), cut, tc.want, tc.wantCut)
			}
		})
	}
}
