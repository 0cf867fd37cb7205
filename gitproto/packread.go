package gitproto

// Reading an object from a pack without go-git's index of it.
//
// go-git decodes a pack's whole .idx into memory the first time an object
// of the pack is read, and the first read at an offset builds a map from
// every offset of the pack to its object id: in a repository of 100,000
// runs (a pack of 300,000 objects) that was 60 ms and then 150 ms more,
// for a `refci status` that reads three objects. packReader finds an
// object by a binary search of the .idx, mapped, not read, and reads it
// (and the bases of a delta) at its offset in the .pack, as git does.
// Anything it cannot do (a loose object, a pack index of another version,
// a damaged pack) it leaves to go-git.

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/packfile"
)

// errNotInPacks says that no pack's index holds the object.
var errNotInPacks = errors.New("not in any pack")

// packReader reads objects from the packs of one objects directory. It is
// not safe for concurrent use (nor is Repo).
type packReader struct {
	dir    string // objects/pack
	packs  []*packIdx
	loaded bool
}

// packIdx is one pack: its mapped version 2 .idx and its .pack, opened
// when first read, and the objects most recently read from it (delta
// bases are read again and again).
type packIdx struct {
	idx   []byte
	n     int
	path  string // the .pack
	pack  *os.File
	cache map[int64]packObject
}

type packObject struct {
	typ  plumbing.ObjectType
	data []byte
}

// maxDeltaDepth bounds a chain of deltas (git makes 50 at most); a deeper
// one, or a cycle of REF_DELTA, is left to go-git.
const maxDeltaDepth = 1000

// reset forgets the packs (read again at the next lookup) and closes them.
func (pr *packReader) reset() {
	for _, p := range pr.packs {
		syscall.Munmap(p.idx)
		if p.pack != nil {
			p.pack.Close()
		}
	}
	pr.packs, pr.loaded = nil, false
}

func (pr *packReader) load() {
	pr.loaded = true
	names, _ := filepath.Glob(filepath.Join(pr.dir, "pack-*.idx"))
	for _, name := range names {
		packPath := strings.TrimSuffix(name, ".idx") + ".pack"
		if _, err := os.Stat(packPath); err != nil {
			continue
		}
		f, err := os.Open(name)
		if err != nil {
			continue
		}
		fi, err := f.Stat()
		if err != nil || fi.Size() < 8+1024+40 || fi.Size() > 1<<40 {
			f.Close()
			continue
		}
		data, err := syscall.Mmap(int(f.Fd()), 0, int(fi.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
		f.Close()
		if err != nil {
			continue
		}
		if !bytes.Equal(data[:8], []byte{0xff, 't', 'O', 'c', 0, 0, 0, 2}) {
			syscall.Munmap(data)
			continue
		}
		n := int(binary.BigEndian.Uint32(data[8+255*4:]))
		if int64(8+1024+n*(20+4+4)+40) > fi.Size() {
			syscall.Munmap(data)
			continue
		}
		pr.packs = append(pr.packs, &packIdx{idx: data, n: n, path: packPath})
	}
}

// find returns the pack and offset of object h.
func (pr *packReader) find(h plumbing.Hash) (*packIdx, int64, bool) {
	if !pr.loaded {
		pr.load()
	}
	for _, p := range pr.packs {
		if off, ok := p.find(h); ok {
			return p, off, true
		}
	}
	return nil, 0, false
}

func (p *packIdx) find(h plumbing.Hash) (int64, bool) {
	fan := func(i int) int { return int(binary.BigEndian.Uint32(p.idx[8+i*4:])) }
	lo, hi := 0, fan(int(h[0]))
	if h[0] > 0 {
		lo = fan(int(h[0]) - 1)
	}
	if hi > p.n || lo > hi {
		return 0, false
	}
	names := p.idx[8+1024:]
	for lo < hi {
		mid := lo + (hi-lo)/2
		switch c := bytes.Compare(names[mid*20:mid*20+20], h[:]); {
		case c == 0:
			off := int64(binary.BigEndian.Uint32(p.idx[8+1024+p.n*24+mid*4:]))
			if off&0x80000000 != 0 {
				at := 8 + 1024 + p.n*28 + int(off&0x7fffffff)*8
				if at+8 > len(p.idx)-40 {
					return 0, false
				}
				off = int64(binary.BigEndian.Uint64(p.idx[at:]))
			}
			return off, true
		case c < 0:
			lo = mid + 1
		default:
			hi = mid
		}
	}
	return 0, false
}

// read returns the type and content of the object at off.
func (pr *packReader) read(p *packIdx, off int64, depth int) (plumbing.ObjectType, []byte, error) {
	if o, ok := p.cache[off]; ok {
		return o.typ, o.data, nil
	}
	if depth > maxDeltaDepth {
		return 0, nil, errors.New("delta chain too deep")
	}
	if p.pack == nil {
		f, err := os.Open(p.path)
		if err != nil {
			return 0, nil, err
		}
		p.pack = f
	}
	var hdr [32]byte
	n, err := p.pack.ReadAt(hdr[:], off)
	if n == 0 {
		return 0, nil, fmt.Errorf("pack %s at %d: %w", p.path, off, err)
	}
	buf := hdr[:n]
	i := 0
	c := buf[i]
	typ := plumbing.ObjectType((c >> 4) & 7)
	size := int64(c & 15)
	for shift := 4; c&0x80 != 0; shift += 7 {
		i++
		if i >= len(buf) || shift > 56 {
			return 0, nil, errors.New("bad object header")
		}
		c = buf[i]
		size |= int64(c&0x7f) << shift
	}
	i++
	var baseOff int64 = -1
	var baseHash plumbing.Hash
	switch typ {
	case plumbing.CommitObject, plumbing.TreeObject, plumbing.BlobObject, plumbing.TagObject:
	case plumbing.OFSDeltaObject:
		if i >= len(buf) {
			return 0, nil, errors.New("bad delta header")
		}
		c = buf[i]
		rel := int64(c & 0x7f)
		for c&0x80 != 0 {
			i++
			if i >= len(buf) || rel > 1<<50 {
				return 0, nil, errors.New("bad delta offset")
			}
			c = buf[i]
			rel = ((rel + 1) << 7) | int64(c&0x7f)
		}
		i++
		baseOff = off - rel
		if rel <= 0 || baseOff < 12 {
			return 0, nil, errors.New("bad delta offset")
		}
	case plumbing.REFDeltaObject:
		if i+20 > len(buf) {
			n2, _ := p.pack.ReadAt(hdr[:], off) // the header fits in 32 bytes: i+20 <= 30
			buf = hdr[:n2]
			if i+20 > len(buf) {
				return 0, nil, errors.New("bad delta header")
			}
		}
		copy(baseHash[:], buf[i:i+20])
		i += 20
	default:
		return 0, nil, fmt.Errorf("object type %d", typ)
	}
	if size > 1<<34 {
		return 0, nil, errors.New("object too large")
	}
	zr, err := zlib.NewReader(io.NewSectionReader(p.pack, off+int64(i), 1<<62))
	if err != nil {
		return 0, nil, err
	}
	data := make([]byte, size)
	if _, err := io.ReadFull(zr, data); err != nil {
		return 0, nil, fmt.Errorf("pack %s at %d: %w", p.path, off, err)
	}
	switch typ {
	case plumbing.OFSDeltaObject, plumbing.REFDeltaObject:
		bp, bo := p, baseOff
		if typ == plumbing.REFDeltaObject {
			var ok bool
			if bp, bo, ok = pr.find(baseHash); !ok {
				return 0, nil, errNotInPacks // a thin pack's base: go-git finds it
			}
		}
		bt, base, err := pr.read(bp, bo, depth+1)
		if err != nil {
			return 0, nil, err
		}
		if data, err = packfile.PatchDelta(base, data); err != nil {
			return 0, nil, err
		}
		typ = bt
	}
	if p.cache == nil || len(p.cache) >= 64 {
		p.cache = map[int64]packObject{}
	}
	if len(data) <= 1<<20 {
		p.cache[off] = packObject{typ, data}
	}
	return typ, data, nil
}

// object reads object h of type t (plumbing.AnyObject: any) from the
// packs. errNotInPacks, or any other error, says to ask go-git.
func (pr *packReader) object(t plumbing.ObjectType, h plumbing.Hash) (plumbing.EncodedObject, error) {
	p, off, ok := pr.find(h)
	if !ok {
		return nil, errNotInPacks
	}
	typ, data, err := pr.read(p, off, 0)
	if err != nil {
		return nil, err
	}
	if t != plumbing.AnyObject && t != typ {
		return nil, plumbing.ErrObjectNotFound
	}
	obj := &plumbing.MemoryObject{}
	obj.SetType(typ)
	obj.Write(data)
	if obj.Hash() != h {
		return nil, fmt.Errorf("pack %s: object %s reads as %s", p.path, h, obj.Hash())
	}
	return obj, nil
}
