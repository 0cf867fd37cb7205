package secrets

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
)

// Load reads the armored, unprotected private key at path (a "PGP PRIVATE
// KEY BLOCK" holding one key, as LoadOrCreate or `gpg --armor
// --export-secret-keys` write it).
//
// A missing file gives an error wrapping fs.ErrNotExist. A public key, a
// passphrase-protected key, a file holding several keys and a file that is
// no OpenPGP key at all each give an error saying so. Load does not check
// the file's permissions; LoadOrCreate does.
func Load(path string) (*Identity, error) {
	return load(path, false)
}

// LoadOrCreate reads the private key at path as Load does, or, if there is
// no file there, generates a key for name and email and writes it there.
// created reports whether it generated the key.
//
// Missing parent directories are created with mode 0700. The key is written
// with mode 0600 to a temporary file in the same directory and then linked
// into place, so a crash never leaves a half-written key and two processes
// racing to create it end up sharing the first one's key.
//
// An existing key file that group or others may read or write is refused,
// with an error telling the user to chmod 600 it.
func LoadOrCreate(path, name, email string) (id *Identity, created bool, err error) {
	id, err = load(path, true)
	if !errors.Is(err, fs.ErrNotExist) {
		return id, false, err
	}
	id, err = Generate(name, email, time.Now())
	if err != nil {
		return nil, false, err
	}
	data, err := id.armoredPrivateKey()
	if err != nil {
		return nil, false, err
	}
	switch err := writeNewFile(path, data); {
	case errors.Is(err, fs.ErrExist):
		// Another process created the key first: use theirs.
		id, err = load(path, true)
		return id, false, err
	case err != nil:
		return nil, false, fmt.Errorf("secrets: write new private key: %w", err)
	}
	return id, true, nil
}

// load reads and parses the key file at path, refusing it if checkMode is
// set and it is accessible to group or others.
func load(path string, checkMode bool) (*Identity, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("secrets: no private key at %s: %w; let refci generate one there, "+
			"or write an unprotected armored key there with: gpg --armor --export-secret-keys KEYID > %s",
			path, fs.ErrNotExist, path)
	}
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	defer f.Close()
	if checkMode && runtime.GOOS != "windows" {
		fi, err := f.Stat()
		if err != nil {
			return nil, fmt.Errorf("secrets: %w", err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			return nil, fmt.Errorf("secrets: private key %s has mode %04o, so other users may read it; "+
				"restrict it with: chmod 600 %s", path, perm, path)
		}
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	id, err := parsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("secrets: load %s: %w", path, err)
	}
	return id, nil
}

// parsePrivateKey parses one armored private key.
func parsePrivateKey(data []byte) (*Identity, error) {
	block, err := armor.Decode(bytes.NewReader(data))
	if err == io.EOF {
		return nil, errors.New("not an OpenPGP key: no \"-----BEGIN PGP PRIVATE KEY BLOCK-----\" line")
	}
	if err != nil {
		return nil, fmt.Errorf("not an OpenPGP key: bad armor: %v", err)
	}
	if n := bytes.Count(data, []byte(armorStart)); n > 1 {
		return nil, fmt.Errorf("the file holds %d armored blocks, want exactly one key", n)
	}
	switch block.Type {
	case openpgp.PrivateKeyType:
	case openpgp.PublicKeyType:
		return nil, errors.New("not a private key: the file holds a public key (PGP PUBLIC KEY BLOCK)")
	default:
		return nil, fmt.Errorf("not a private key: the file holds a %q block", block.Type)
	}
	el, err := openpgp.ReadKeyRing(block.Body)
	if err != nil {
		return nil, fmt.Errorf("cannot read the key: %v", err)
	}
	if len(el) != 1 {
		return nil, fmt.Errorf("the file holds %d keys, want exactly one", len(el))
	}
	return newIdentity(el[0])
}

// writeNewFile writes data to a new file at path with mode 0600, creating
// missing parent directories with mode 0700. It fails with an error wrapping
// fs.ErrExist if path already exists, and never leaves a partial file at
// path.
func writeNewFile(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*") // mode 0600
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	// A hard link, unlike a rename, never replaces an existing file.
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return err
		}
		// The file system has no hard links: rename instead, which
		// replaces a key created concurrently, but never leaves a partial
		// one.
		if err := os.Rename(tmp.Name(), path); err != nil {
			return err
		}
	}
	// Make the new directory entry durable; not all systems can.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
