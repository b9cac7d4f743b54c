package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/auditlog"
	"github.com/kmsfs/kmsfs/kms/kmsmw"
)

// openAudit opens the client-side audit log --audit-log names: every call
// this process makes to the KMS (embedded or remote), in the hash-chained
// format of `kmsfs kms serve`'s log, so `kmsfs kms audit verify` checks it.
// With an embedded KMS this is the only record of key use, CloudTrail's role.
// It returns nil funcs when no log was asked for.
func (c *commonFlags) openAudit(command string) (record func(kmsmw.AuditRecord) error, closeLog func(), err error) {
	if c.auditLog == "" {
		return nil, func() {}, nil
	}
	path, err := filepath.Abs(c.auditLog)
	if err != nil {
		return nil, nil, err
	}
	log, err := auditlog.Open(path, auditlog.Options{})
	if err != nil {
		return nil, nil, err
	}
	principal := "local:uid=" + strconv.Itoa(os.Getuid())
	if u, err := user.Current(); err == nil {
		principal += "(" + u.Username + ")"
	}
	source := fmt.Sprintf("kmsfs %s pid %d", command, os.Getpid())
	var prefix [4]byte
	rand.Read(prefix[:])
	var seq atomic.Uint64
	record = func(r kmsmw.AuditRecord) error {
		e := &auditlog.Entry{
			Time:              time.Now().UTC().Format(time.RFC3339Nano),
			RequestID:         hex.EncodeToString(prefix[:]) + "-" + strconv.FormatUint(seq.Add(1), 16),
			Operation:         r.Operation,
			Principal:         principal,
			KeyARN:            r.KeyARN,
			DestKeyARN:        r.DestKeyARN,
			EncryptionContext: r.Context,
			DestContext:       r.DestContext,
			SourceAddress:     source,
			Result:            auditlog.ResultSuccess,
			Speculative:       r.Speculative,
		}
		if r.Err != nil {
			e.Result, e.ErrorMessage = kms.Code(r.Err), r.Err.Error()
			if e.Result == "" {
				e.Result = kms.CodeInternal
			}
		}
		return log.Record(e)
	}
	return record, func() { log.Close() }, nil
}
