package shared

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// A chunk object is a self-describing piece of one file's ciphertext
// stream (docs/FORMAT.md, "Shared volumes"): a fixed header, a copy of the
// file's header region (stream bytes [0, H), which carry the wrapped data
// key and the file ID), then the chunk's stream bytes. So an object can be
// decrypted with the bucket and the KMS alone, and a bucket listing tells
// nothing but sizes.
const (
	chunkMagic   = "kmsfschk"
	chunkVersion = 1
	// chunkFixed is the size of the fixed part of the chunk header.
	chunkFixed = 72
	// DefaultChunkSize is the stream bytes per chunk object of a new volume.
	DefaultChunkSize = 4 << 20
	// ChunkTrimmed is the header flag of a chunk cut after its last data:
	// the rest of its range is zeros it does not store, and the stream goes
	// on after it (so it does not end the file, whatever its length).
	ChunkTrimmed = 1
)

// ChunkHeader is the fixed part of a chunk object.
type ChunkHeader struct {
	VolumeID [16]byte
	Ino      uint64
	Gen      int64 // the generation of the chunk list it was written for
	Index    int64
	Offset   int64  // stream offset of the first data byte
	Length   int64  // data bytes
	Flags    uint16 // ChunkTrimmed
}

// encodeChunk builds a chunk object: header, region copy (exactly
// regionSize bytes, zero-padded), data.
func encodeChunk(h ChunkHeader, region []byte, regionSize int, data []byte) []byte {
	out := make([]byte, chunkFixed+regionSize+len(data))
	copy(out, chunkMagic)
	binary.BigEndian.PutUint16(out[8:], chunkVersion)
	binary.BigEndian.PutUint16(out[10:], h.Flags)
	binary.BigEndian.PutUint32(out[12:], uint32(regionSize))
	copy(out[16:32], h.VolumeID[:])
	binary.BigEndian.PutUint64(out[32:], h.Ino)
	binary.BigEndian.PutUint64(out[40:], uint64(h.Gen))
	binary.BigEndian.PutUint64(out[48:], uint64(h.Index))
	binary.BigEndian.PutUint64(out[56:], uint64(h.Offset))
	binary.BigEndian.PutUint64(out[64:], uint64(h.Length))
	copy(out[chunkFixed:chunkFixed+regionSize], region)
	copy(out[chunkFixed+regionSize:], data)
	return out
}

// ParseChunk splits a chunk object into its header, region copy and data.
func ParseChunk(obj []byte) (ChunkHeader, []byte, []byte, error) {
	h, rs, err := parseChunkHead(obj)
	if err != nil {
		return h, nil, nil, err
	}
	if int64(len(obj)) != int64(chunkFixed+rs)+h.Length {
		return h, nil, nil, fmt.Errorf("chunk object is %d bytes, its header says %d", len(obj), int64(chunkFixed+rs)+h.Length)
	}
	return h, obj[chunkFixed : chunkFixed+rs], obj[chunkFixed+rs:], nil
}

// parseChunkHead parses the fixed header at the start of a chunk object
// and returns the length of the region copy that follows it.
func parseChunkHead(obj []byte) (ChunkHeader, int, error) {
	var h ChunkHeader
	if len(obj) < chunkFixed || !bytes.Equal(obj[:8], []byte(chunkMagic)) {
		return h, 0, errors.New("not a kmsfs chunk object")
	}
	if v := binary.BigEndian.Uint16(obj[8:]); v != chunkVersion {
		return h, 0, fmt.Errorf("chunk object version %d is not supported", v)
	}
	h.Flags = binary.BigEndian.Uint16(obj[10:])
	rs := int(binary.BigEndian.Uint32(obj[12:]))
	copy(h.VolumeID[:], obj[16:32])
	h.Ino = binary.BigEndian.Uint64(obj[32:])
	h.Gen = int64(binary.BigEndian.Uint64(obj[40:]))
	h.Index = int64(binary.BigEndian.Uint64(obj[48:]))
	h.Offset = int64(binary.BigEndian.Uint64(obj[56:]))
	h.Length = int64(binary.BigEndian.Uint64(obj[64:]))
	if h.Length < 0 || h.Offset < 0 || h.Index < 0 {
		return h, 0, errors.New("chunk object header has a negative field")
	}
	return h, rs, nil
}

// chunkSkip is how many of a chunk's first stream bytes its object leaves
// out, as zeros: a chunk whose data starts after holes is stored from its
// first data on, and its key (with or without the volume prefix) ends in
// "-" and that count in decimal. Every other key has none.
func chunkSkip(key string) int64 {
	_, s, ok := strings.Cut(key[strings.LastIndexByte(key, '/')+1:], "-")
	if !ok {
		return 0
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return n
}
