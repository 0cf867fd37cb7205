package gitproto

import (
	"bufio"
	"compress/zlib"
	"crypto/sha1"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/idxfile"
)

// Objects written in a batch.
//
// Every object written loose is a new file, and on some file systems a new
// file costs far more than its bytes: ext4 without a journal scans past
// every inode freed in the last minutes on each allocation. A worker
// writes about eight small objects per job (a claim's blob, tree and
// commit; a result's blobs, trees and commit), so between BeginBatch and
// EndBatch a Repo keeps the small objects it writes in memory, readable
// as if stored, and EndBatch stores them all as one pack: two files, the
// .pack and its .idx, whatever their number. Objects over batchObjectMax
// (a long log, an artifact) are streamed loose as before, so a batch's
// memory stays small.
//
// The pack is installed the way git installs one: both files written
// under temporary names in objects/pack, the .pack renamed into place
// first and the .idx last, since git finds packs by their .idx. Nothing a
// batch holds is stored before EndBatch: a caller must end the batch, and
// see it succeed, before it names the objects in a ref.

// batchObjectMax is the largest object a batch holds in memory.
const batchObjectMax = 256 << 10

type pendingObject struct {
	typ  plumbing.ObjectType
	data []byte
}

// pendingObjects is what a Repo's batch holds; nil when no batch is open.
type pendingObjects struct {
	objs  map[Hash]pendingObject
	order []Hash
}

func (p *pendingObjects) get(h Hash) (pendingObject, bool) {
	if p == nil {
		return pendingObject{}, false
	}
	o, ok := p.objs[h]
	return o, ok
}

// BeginBatch starts keeping small new objects for one pack (see above).
// A batch already open goes on.
func (r *Repo) BeginBatch() {
	if r.st.batch.p == nil {
		r.st.batch.p = &pendingObjects{objs: map[Hash]pendingObject{}}
	}
}

// EndBatch stores the objects of the open batch as one pack and closes
// the batch. On failure nothing of the batch is stored and its objects
// are gone: write them again. Without an open batch it does nothing.
func (r *Repo) EndBatch() error {
	p := r.st.batch.p
	r.st.batch.p = nil
	if p == nil || len(p.order) == 0 {
		return nil
	}
	if err := writePack(filepath.Join(r.commonDir, "objects", "pack"), p); err != nil {
		return fmt.Errorf("write objects: %w", describeIOError(err))
	}
	// go-git keeps its own list of packs: read it again when next needed.
	r.st.reindex()
	return nil
}

// holdInBatch keeps an object of the open batch; ok is false when there
// is no batch or the object is too big for one.
func (r *Repo) holdInBatch(t plumbing.ObjectType, size int64, src io.Reader) (h Hash, ok bool, err error) {
	p := r.st.batch.p
	if p == nil || size > batchObjectMax {
		return ZeroHash, false, nil
	}
	data := make([]byte, size)
	if _, err := io.ReadFull(src, data); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			err = fmt.Errorf("short read of %d bytes (the file changed while being stored)", size)
		}
		return ZeroHash, true, fmt.Errorf("write object: %w", err)
	}
	h = plumbing.ComputeHash(t, data)
	if _, dup := p.objs[h]; !dup {
		p.objs[h] = pendingObject{typ: t, data: data}
		p.order = append(p.order, h)
	}
	return h, true, nil
}

// packEntryWriter writes a pack's bytes, hashing all of them and keeping
// the offset and the CRC-32 of the entry being written (what the .idx
// records of each object).
type packEntryWriter struct {
	w   *bufio.Writer
	sum hash.Hash
	crc hash.Hash32
	off int64
}

func (pw *packEntryWriter) Write(b []byte) (int, error) {
	n, err := pw.w.Write(b)
	pw.sum.Write(b[:n])
	pw.crc.Write(b[:n])
	pw.off += int64(n)
	return n, err
}

// writePack writes p as a pack and its index in dir (objects/pack):
// version 2, whole objects (no deltas), in the order written.
func writePack(dir string, p *pendingObjects) (err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	pack, err := os.CreateTemp(dir, "tmp_pack_refci_")
	if err != nil {
		return err
	}
	idx, err := os.CreateTemp(dir, "tmp_idx_refci_")
	if err != nil {
		pack.Close()
		os.Remove(pack.Name())
		return err
	}
	installed := false
	defer func() {
		pack.Close()
		idx.Close()
		if !installed {
			os.Remove(pack.Name())
			os.Remove(idx.Name())
		}
	}()
	pw := &packEntryWriter{w: bufio.NewWriterSize(pack, 64<<10), sum: sha1.New(), crc: crc32.NewIEEE()}
	var head [12]byte
	copy(head[:4], "PACK")
	binary.BigEndian.PutUint32(head[4:8], 2)
	binary.BigEndian.PutUint32(head[8:12], uint32(len(p.order)))
	if _, err := pw.Write(head[:]); err != nil {
		return err
	}
	iw := new(idxfile.Writer)
	iw.OnHeader(uint32(len(p.order)))
	zw := zlib.NewWriter(pw)
	for _, h := range p.order {
		o := p.objs[h]
		off := pw.off
		pw.crc.Reset()
		if _, err := pw.Write(packEntryHeader(o.typ, int64(len(o.data)))); err != nil {
			return err
		}
		zw.Reset(pw)
		if _, err := zw.Write(o.data); err != nil {
			return err
		}
		if err := zw.Close(); err != nil {
			return err
		}
		iw.Add(h, uint64(off), pw.crc.Sum32())
	}
	var sum Hash
	copy(sum[:], pw.sum.Sum(nil))
	if _, err := pw.w.Write(sum[:]); err != nil {
		return err
	}
	if err := pw.w.Flush(); err != nil {
		return err
	}
	if err := iw.OnFooter(sum); err != nil {
		return err
	}
	mi, err := iw.Index()
	if err != nil {
		return err
	}
	ib := bufio.NewWriter(idx)
	if _, err := idxfile.NewEncoder(ib).Encode(mi); err != nil {
		return err
	}
	if err := ib.Flush(); err != nil {
		return err
	}
	if err := pack.Close(); err != nil {
		return err
	}
	if err := idx.Close(); err != nil {
		return err
	}
	base := filepath.Join(dir, "pack-"+sum.String())
	os.Chmod(pack.Name(), 0o444)
	os.Chmod(idx.Name(), 0o444)
	if _, err := os.Stat(base + ".idx"); err == nil {
		return nil // the same objects in the same order: already installed
	}
	if err := os.Rename(pack.Name(), base+".pack"); err != nil {
		return err
	}
	if err := os.Rename(idx.Name(), base+".idx"); err != nil {
		os.Remove(base + ".pack")
		return err
	}
	installed = true
	return nil
}

// packEntryHeader is the header of a whole (not delta) object in a pack:
// its type and size, seven bits at a time, the first byte holding the
// type and the low four bits of the size.
func packEntryHeader(t plumbing.ObjectType, size int64) []byte {
	b := []byte{byte(t)<<4 | byte(size&0x0f)}
	size >>= 4
	for size > 0 {
		b[len(b)-1] |= 0x80
		b = append(b, byte(size&0x7f))
		size >>= 7
	}
	return b
}
