package worker

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"math/rand/v2"
	"net/url"
	"strings"
	"testing"
)

// maskAll writes input to a fresh Masker in the given chunk sizes and
// returns the output after Flush.
func maskAll(t *testing.T, set *MaskSet, input []byte, cuts []int) string {
	t.Helper()
	var out bytes.Buffer
	m := &Masker{Set: set, W: &out}
	prev := 0
	for _, c := range append(cuts, len(input)) {
		if _, err := m.Write(input[prev:c]); err != nil {
			t.Fatal(err)
		}
		prev = c
	}
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

func TestMaskEveryEncodingAndSplit(t *testing.T) {
	const secret = "tok/en+with?odd&chars=1"
	multi := "-----BEGIN KEY-----\nAAAAB3NzaC1yc2EAAAADAQAB\nshort\n-----END KEY-----\n"
	set := &MaskSet{}
	set.Add([]byte(secret))
	set.Add([]byte(multi))
	b64 := func(e *base64.Encoding, s string) string { return e.EncodeToString([]byte(s)) }
	cases := []struct{ name, leak string }{
		{"plain", secret},
		{"plain with newline", secret + "\n"},
		{"base64 std", b64(base64.StdEncoding, secret)},
		{"base64 std raw", b64(base64.RawStdEncoding, secret)},
		{"base64 url", b64(base64.URLEncoding, secret)},
		{"base64 url raw", b64(base64.RawURLEncoding, secret)},
		{"base64 std of value+newline (echo | base64)", b64(base64.StdEncoding, secret+"\n")},
		{"base64 url raw of value+newline", b64(base64.RawURLEncoding, secret+"\n")},
		{"hex", hex.EncodeToString([]byte(secret))},
		{"HEX", strings.ToUpper(hex.EncodeToString([]byte(secret)))},
		{"hex of value+newline (xxd -p)", hex.EncodeToString([]byte(secret + "\n"))},
		{"url query", url.QueryEscape(secret)},
		{"url path", url.PathEscape(secret)},
		{"multi-line whole", multi},
		{"multi-line one line", "AAAAB3NzaC1yc2EAAAADAQAB"},
		{"multi-line base64", b64(base64.StdEncoding, multi)},
		{"multi-line hex", hex.EncodeToString([]byte(multi))},
	}
	for _, tc := range cases {
		input := []byte("before " + tc.leak + " after\n")
		for cut := 0; cut <= len(input); cut++ {
			got := maskAll(t, set, input, []int{cut})
			if strings.Contains(got, tc.leak) || !strings.Contains(got, MaskText) || !strings.HasPrefix(got, "before ") || !strings.HasSuffix(got, " after\n") {
				t.Fatalf("%s, split at %d: %q", tc.name, cut, got)
			}
			for _, p := range maskPatterns([]byte(secret)) {
				if bytes.Contains([]byte(got), p) {
					t.Fatalf("%s, split at %d: pattern %q survives in %q", tc.name, cut, p, got)
				}
			}
		}
	}
	// A short line of a multi-line value is not masked on its own.
	if got := maskAll(t, set, []byte("short answer"), nil); got != "short answer" {
		t.Errorf("short line masked: %q", got)
	}
}

func TestMaskRandomSplitsAndByteAtATime(t *testing.T) {
	set := &MaskSet{}
	secret := "hunter2-is-not-a-password"
	set.Add([]byte(secret))
	var in strings.Builder
	for i := range 200 {
		switch i % 4 {
		case 0:
			in.WriteString(secret)
		case 1:
			in.WriteString(base64.StdEncoding.EncodeToString([]byte(secret + "\n")))
		case 2:
			in.WriteString("hunter2-is-not") // a prefix only: kept
		default:
			in.WriteString(hex.EncodeToString([]byte(secret)))
		}
		in.WriteString(" | ")
	}
	input := []byte(in.String())
	want := maskAll(t, set, input, nil)
	if strings.Count(want, MaskText) != 150 || strings.Count(want, "hunter2-is-not |") != 50 {
		t.Fatalf("unsplit output masks wrongly: %d masks", strings.Count(want, MaskText))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		var cuts []int
		for c := rng.IntN(8); c < len(input); c += 1 + rng.IntN(40) {
			cuts = append(cuts, c)
		}
		if got := maskAll(t, set, input, cuts); got != want {
			t.Fatalf("cuts %v give a different output", cuts)
		}
	}
	every := make([]int, len(input)-1)
	for i := range every {
		every[i] = i + 1
	}
	if got := maskAll(t, set, input, every); got != want {
		t.Fatal("byte-at-a-time output differs")
	}
}

func TestMaskPassThroughAndLateValue(t *testing.T) {
	set := &MaskSet{}
	var out bytes.Buffer
	m := &Masker{Set: set, W: &out}
	m.Write([]byte("nothing to hide; value-x"))
	if out.String() != "nothing to hide; value-x" {
		t.Fatalf("empty set changed output: %q", out.String())
	}
	set.Add([]byte("value-xyz"))
	m.Write([]byte("yz and value-"))
	if strings.Contains(out.String(), "value-") && strings.HasSuffix(out.String(), "value-") {
		t.Fatalf("a prefix of a value was written out: %q", out.String())
	}
	m.Write([]byte("xyz!"))
	m.Flush()
	if got := out.String(); got != "nothing to hide; value-xyz and ***!" {
		t.Errorf("got %q", got)
	}
	if m.Masked() != 1 {
		t.Errorf("Masked() = %d", m.Masked())
	}
	set.Add([]byte("tiny"))
	if got := maskAll(t, set, []byte("tiny"), nil); got != "tiny" {
		t.Errorf("a value under MinMaskLen was masked: %q", got)
	}
}

func TestMaskSetHoldsAndString(t *testing.T) {
	var none *MaskSet
	if none.Holds("anything") || none.String("anything") != "anything" || (&MaskSet{}).Holds("anything") {
		t.Error("an empty or nil set holds something")
	}
	m := &MaskSet{}
	m.Add([]byte("value-123\n"))
	for s, want := range map[string]string{
		"job-value-123":                 "job-***",
		"dir/76616c75652d313233/x":      "dir/***/x", // hex
		"dmFsdWUtMTIz.txt":              "***.txt",   // base64
		"value-12":                      "value-12",
		"value-123 and value-123 again": "*** and *** again",
	} {
		if got := m.String(s); got != want {
			t.Errorf("String(%q) = %q, want %q", s, got, want)
		}
		if m.Holds(s) != (want != s) {
			t.Errorf("Holds(%q) = %v", s, m.Holds(s))
		}
	}
}
