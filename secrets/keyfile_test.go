package secrets

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"refci.dev/refci/fixtures/gnupg"
)

func TestLoadOrCreate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "refci")
	path := filepath.Join(dir, "worker.key")

	id, created, err := LoadOrCreate(path, "Worker", "worker@example.invalid")
	if err != nil || !created {
		t.Fatalf("first LoadOrCreate = created %v, %v; want a new key", created, err)
	}
	if id.UserID() != "Worker <worker@example.invalid>" {
		t.Errorf("UserID() = %q", id.UserID())
	}
	for p, want := range map[string]fs.FileMode{path: 0o600, dir: 0o700, filepath.Dir(dir): 0o700} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s has mode %04o, want %04o", p, got, want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("key directory holds %d entries, want only the key (no temporary file)", len(entries))
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(data), "-----BEGIN PGP PRIVATE KEY BLOCK-----\n") {
		t.Errorf("key file does not start with an armor line:\n%.60s", data)
	}

	again, created, err := LoadOrCreate(path, "Other", "other@example.invalid")
	if err != nil || created {
		t.Fatalf("second LoadOrCreate = created %v, %v; want the existing key", created, err)
	}
	if again.Fingerprint() != id.Fingerprint() || again.UserID() != id.UserID() {
		t.Errorf("second LoadOrCreate loaded %s %q, want %s %q", again.Fingerprint(), again.UserID(), id.Fingerprint(), id.UserID())
	}
	loaded, err := Load(path)
	if err != nil || loaded.Fingerprint() != id.Fingerprint() {
		t.Fatalf("Load = %v, want the created key", err)
	}
	// The loaded key signs, and the generated key's public half verifies it.
	var k Keyring
	k.Add(id)
	if s, err := k.VerifyDetached(commitLike, mustSign(t, loaded, commitLike)); err != nil || s.Fingerprint != id.Fingerprint() {
		t.Errorf("signature by the loaded key: %+v, %v", s, err)
	}
}

func TestLoadOrCreateRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys", "worker.key")
	const n = 8
	fprs := make(chan string, n)
	created := make(chan bool, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, c, err := LoadOrCreate(path, "Worker", "worker@example.invalid")
			if err != nil {
				t.Error(err)
				return
			}
			fprs <- id.Fingerprint()
			created <- c
		}()
	}
	wg.Wait()
	close(fprs)
	close(created)
	ncreated := 0
	for c := range created {
		if c {
			ncreated++
		}
	}
	onDisk, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	for fpr := range fprs {
		if fpr != onDisk.Fingerprint() {
			t.Errorf("a racing LoadOrCreate returned key %s, the file holds %s", fpr, onDisk.Fingerprint())
		}
	}
	if ncreated != 1 {
		t.Errorf("%d calls report creating the key, want 1", ncreated)
	}
}

func TestLoadOrCreateRefusesOpenPermissions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "worker.key")
	if _, _, err := LoadOrCreate(path, "Worker", "worker@example.invalid"); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []fs.FileMode{0o644, 0o640, 0o604, 0o660} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, _, err := LoadOrCreate(path, "Worker", "worker@example.invalid")
		if err == nil {
			t.Fatalf("LoadOrCreate accepted a key file with mode %04o", mode)
		}
		if !strings.Contains(err.Error(), "chmod 600 "+path) {
			t.Errorf("mode %04o: error %q does not tell to chmod 600", mode, err)
		}
	}
	if err := os.Chmod(path, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreate(path, "Worker", "worker@example.invalid"); err != nil {
		t.Errorf("mode 0400: %v", err)
	}
}

func TestLoadErrors(t *testing.T) {
	g := gnupg.New(t)
	id := mustGenerate(t, "Worker")
	fpr := g.GenKey("Plain <plain@example.invalid>", "ed25519", "sign", "never")
	unprotected := g.Run(nil, "--pinentry-mode", "loopback", "--passphrase", "", "--armor", "--export-secret-keys", fpr)

	// A passphrase-protected key, exported the way GnuPG does it.
	g2 := gnupg.New(t)
	g2.Run(nil, "--passphrase", "s3cret", "--pinentry-mode", "loopback",
		"--quick-gen-key", "Protected <p@example.invalid>", "ed25519", "sign", "never")
	protected := g2.Run(nil, "--pinentry-mode", "loopback", "--passphrase", "s3cret", "--armor", "--export-secret-keys")
	twoBlocks := string(must(id.armoredPrivateKey())) + unprotected
	g.GenKey("Second <second@example.invalid>", "ed25519", "sign", "never")
	oneBlockTwoKeys := g.Run(nil, "--pinentry-mode", "loopback", "--passphrase", "", "--armor", "--export-secret-keys")

	dir := t.TempDir()
	for _, tc := range []struct {
		name, content, want string
		notExist            bool
	}{
		{name: "missing", notExist: true, want: "gpg --armor --export-secret-keys"},
		{name: "public", content: string(mustPublicKey(t, id)), want: "public key"},
		{name: "garbage", content: "hello\n", want: "not an OpenPGP key"},
		{name: "empty", content: "", want: "not an OpenPGP key"},
		{name: "signature", content: mustSign(t, id, commitLike), want: "not a private key"},
		{name: "protected", content: protected, want: "passphrase"},
		{name: "two blocks", content: twoBlocks, want: "want exactly one"},
		{name: "two keys", content: oneBlockTwoKeys, want: "want exactly one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			if !tc.notExist {
				if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, err := Load(path)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file or say %q", err, tc.want)
			}
			if got := errors.Is(err, fs.ErrNotExist); got != tc.notExist {
				t.Errorf("errors.Is(err, fs.ErrNotExist) = %v", got)
			}
			// LoadOrCreate creates only where there is no file.
			if !tc.notExist {
				if _, _, err := LoadOrCreate(path, "X", "x@example.invalid"); err == nil {
					t.Error("LoadOrCreate replaced the bad file")
				}
			}
		})
	}

	// An unprotected key exported by GnuPG loads and signs, and GnuPG
	// verifies the signature.
	gpgKey, err := Load(g.File("gpg.key", []byte(unprotected)))
	if err != nil {
		t.Fatal(err)
	}
	if gpgKey.Fingerprint() != fpr {
		t.Errorf("loaded fingerprint %s, want %s", gpgKey.Fingerprint(), fpr)
	}
	out, _, err := g.Try(nil, "--status-fd", "1", "--verify",
		g.File("sig.asc", []byte(mustSign(t, gpgKey, commitLike))), g.File("msg", commitLike))
	if err != nil || len(gnupg.Status(out, "VALIDSIG")) != 1 {
		t.Errorf("gpg --verify of a signature by the loaded gpg key: %v\n%s", err, out)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestLoadRefusesKeysGnuPG22CannotRead writes keys go-crypto can make but
// GnuPG 2.2 cannot use: a v6 key, and a v4 key with the native Ed25519
// algorithm (27).
func TestLoadRefusesKeysGnuPG22CannotRead(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  packet.Config
		want string
	}{
		{"v6", packet.Config{V6Keys: true, Algorithm: packet.PubKeyAlgoEd25519}, "version 6"},
		{"v4 algorithm 27", packet.Config{Algorithm: packet.PubKeyAlgoEd25519}, "algorithm 27"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := openpgp.NewEntity("New", "", "new@example.invalid", &tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			w, _ := armor.Encode(&buf, openpgp.PrivateKeyType, nil)
			if err := e.SerializePrivateWithoutSigning(w, nil); err != nil {
				t.Fatal(err)
			}
			w.Close()
			path := filepath.Join(t.TempDir(), "key.asc")
			if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := Load(path); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Load = %v, want an error saying %q", err, tc.want)
			}
		})
	}
}
