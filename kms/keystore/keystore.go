// Package keystore is the embedded KMS: AWS-KMS-style symmetric keys held in a
// directory of their own, apart from the encrypted data. Every mount uses it
// in-process by default; the admin CLI and `kmsfs kms serve` use it too, often
// at the same time from different processes.
//
// Directory layout (directory mode 0700, files 0600):
//
//	keystore.json   all state: keys, versions, aliases, policies, grants;
//	                key material only sealed under the key-encryption key
//	keystore.lock   flock'ed for every read-modify-write
//	root.key        the key-encryption key, hex, only when no passphrase is used
//
// With a passphrase the key-encryption key (KEK) is derived with argon2id and
// never stored; the salt, cost parameters and a check value sealed under the
// KEK are stored in keystore.json so a wrong passphrase fails Open clearly.
//
// Every write replaces keystore.json atomically and durably (temp file, fsync,
// rename, fsync directory) under the lock. Every operation first checks,
// with one stat, whether another process has replaced the state file, and
// reloads it if so: `kmsfs kms disable` in one process stops a mount in another
// on its next call.
//
// The keystore stores key policies and grants but does not evaluate them;
// authorisation belongs to the server.
package keystore

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

// Compile-time checks that the keystore is a complete KMS.
var (
	_ kms.Crypto = (*Keystore)(nil)
	_ kms.Admin  = (*Keystore)(nil)
)

// Options configures Open.
type Options struct {
	// Passphrase, if non-empty, protects the key material: it is encrypted
	// under a key derived from the passphrase with argon2id. It must be given
	// when the keystore is created to take effect, and on every later Open.
	// Empty means a random root key stored in DIR/root.key.
	Passphrase []byte
	// Region for ARNs; default "local".
	Region string
	// Account is the 12-digit account ID for ARNs; default "000000000000".
	Account string
	// PKCS11, if set, keeps the KEK in a PKCS#11 token (an HSM, SoftHSM2
	// in tests): a non-extractable AES-256 key that seals and opens the
	// key material inside the token. Set it when the keystore is created
	// to take effect, and on every later Open.
	PKCS11 *PKCS11Options
	// CustomKeyStoreModule is the PKCS#11 library through which this
	// process reaches the tokens of custom key stores (customkeystore.go).
	CustomKeyStoreModule string
	// Now is the clock (tests advance it); default time.Now.
	Now func() time.Time
	// Warn receives warnings; default writes them to stderr. It is called
	// with the keystore's mutex held, so it must not call the Keystore.
	Warn func(msg string)
}

const (
	defaultRegion  = "local"
	defaultAccount = "000000000000"
	// maintenanceRetry is how long to wait after a failed background write
	// (purge or automatic rotation) before trying again, so a full disk does
	// not turn every call into a failed write and a warning.
	maintenanceRetry = time.Minute
)

// Keystore is an open keystore directory. It is safe for concurrent use.
type Keystore struct {
	dir       string
	statePath string
	region    string
	account   string
	now       func() time.Time
	warn      func(string)
	lock      *fileLock

	mu      sync.Mutex
	closed  bool
	mk      kek
	st      *state
	held    *os.File // the state file st was read from or written as
	heldID  fileID
	due     time.Time // st.nextDue()
	retryAt time.Time // no maintenance attempts before this
	aeads   map[aeadKey]cipher.AEAD
	stores  *storeConns // this process's custom key store connections
}

// aeadKey names one version of one key's backing material.
type aeadKey struct {
	key     keyUUID
	version uint32
}

// DefaultDir returns os.UserConfigDir()/kmsfs/keystore. ($KMSFS_KEYSTORE,
// which overrides it, is read by the command, not here.)
func DefaultDir() (string, error) {
	cfg, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("keystore directory: %w", err)
	}
	return filepath.Join(cfg, "kmsfs", "keystore"), nil
}

// Open opens the keystore in dir, creating it (and dir, mode 0700) when dir
// holds no keystore yet. A keystore is created with passphrase protection
// when opts.Passphrase is non-empty, else with a root key file (and a warning).
func Open(dir string, opts Options) (*Keystore, error) {
	if opts.Region == "" {
		opts.Region = defaultRegion
	}
	if opts.Account == "" {
		opts.Account = defaultAccount
	}
	if strings.ContainsAny(opts.Region, ":/ ") {
		return nil, fmt.Errorf("open keystore: invalid region %q", opts.Region)
	}
	if !isAccountID(opts.Account) {
		return nil, fmt.Errorf("open keystore: account %q is not a 12-digit account ID", opts.Account)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Warn == nil {
		opts.Warn = func(msg string) { fmt.Fprintln(os.Stderr, "kmsfs: keystore: "+msg) }
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("open keystore %s: %w", dir, err)
	}
	dir = abs
	if err := ensureDir(dir, opts.Warn); err != nil {
		return nil, fmt.Errorf("open keystore %s: %w", dir, err)
	}
	lock, err := openLock(dir)
	if err != nil {
		return nil, fmt.Errorf("open keystore %s: %w", dir, err)
	}
	k := &Keystore{
		dir:       dir,
		statePath: filepath.Join(dir, stateName),
		region:    opts.Region,
		account:   opts.Account,
		now:       opts.Now,
		warn:      opts.Warn,
		lock:      lock,
		aeads:     map[aeadKey]cipher.AEAD{},
		stores:    newStoreConns(opts.CustomKeyStoreModule),
	}
	if err := k.init(opts.Passphrase, opts.PKCS11); err != nil {
		lock.close()
		return nil, fmt.Errorf("open keystore %s: %w", dir, err)
	}
	if k.st.Protection.Kind == protectionRootKey {
		k.warn(fmt.Sprintf("no passphrase: root key stored in %s; anyone who can read that file can use every key", filepath.Join(dir, rootKeyName)))
	}
	return k, nil
}

func isAccountID(s string) bool {
	if len(s) != 12 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// ensureDir creates dir with mode 0700 (not subject to umask), or warns when
// an existing one is open to group or others.
func ensureDir(dir string, warn func(string)) error {
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		return os.Chmod(dir, 0o700)
	}
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		warn(fmt.Sprintf("keystore directory %s has mode %04o; it should be 0700", dir, fi.Mode().Perm()))
	}
	return nil
}

// init loads or creates the state under the lock.
func (k *Keystore) init(passphrase []byte, hsm *PKCS11Options) error {
	if err := k.lock.lock(context.Background()); err != nil {
		return err
	}
	defer k.lock.unlock()
	if err := removeStaleTemps(k.dir); err != nil {
		return fmt.Errorf("remove stale temp files: %w", err)
	}
	f, err := os.Open(k.statePath)
	if errors.Is(err, fs.ErrNotExist) {
		p, mk, err := newProtection(k.dir, passphrase, hsm)
		if err != nil {
			return err
		}
		k.mk = mk
		if err := k.write(newState(p)); err != nil {
			mk.zero()
			return err
		}
		return nil
	}
	if err != nil {
		return err
	}
	st, id, err := readState(f)
	if err != nil {
		f.Close()
		return err
	}
	mk, err := unlock(k.dir, st.Protection, passphrase, hsm)
	if err != nil {
		f.Close()
		return err
	}
	k.mk = mk
	k.install(st, f, id)
	// Purge expired keys and apply due rotations now, while we hold the lock.
	if _, err := k.mutateHeld(func(*state, time.Time) (bool, error) { return false, nil }); err != nil {
		k.warn(fmt.Sprintf("maintenance at open: %v", err))
	}
	return nil
}

// readState reads and validates the state file f.
func readState(f *os.File) (*state, fileID, error) {
	id, err := fstatID(f)
	if err != nil {
		return nil, id, err
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, id, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	st, err := decodeState(data)
	if err != nil {
		return nil, id, fmt.Errorf("%s: %w", f.Name(), err)
	}
	return st, id, nil
}

// Dir returns the keystore directory (absolute).
func (k *Keystore) Dir() string { return k.dir }

// Close zeroes the key-encryption key and drops cached key material. The
// Keystore is unusable afterwards. (The AES key schedules inside cached
// cipher.AEAD values belong to crypto/aes and cannot be zeroed; they become
// garbage.)
func (k *Keystore) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return nil
	}
	k.closed = true
	k.stores.closeAll()
	k.mk.zero()
	k.aeads = nil
	k.st = nil
	var errs []error
	if k.held != nil {
		errs = append(errs, k.held.Close())
	}
	errs = append(errs, k.lock.close())
	return errors.Join(errs...)
}

// install makes st (read from or written as f) the current state.
func (k *Keystore) install(st *state, f *os.File, id fileID) {
	if k.held != nil && k.held != f {
		k.held.Close()
	}
	k.st, k.held, k.heldID = st, f, id
	k.due = st.nextDue()
	k.stores.sync(st)
	for ak := range k.aeads {
		if _, ok := st.Keys[ak.key.String()]; !ok {
			delete(k.aeads, ak)
		}
	}
}

// write persists st atomically and installs it. Caller holds mu and the lock.
func (k *Keystore) write(st *state) error {
	if err := st.index(); err != nil {
		return fmt.Errorf("refusing to write inconsistent state: %w", err)
	}
	st.Generation++
	st.Format = st.format()
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	f, err := writeFileAtomic(k.dir, stateName, data)
	if err != nil {
		return fmt.Errorf("write %s: %w", k.statePath, err)
	}
	id, err := fstatID(f)
	if err != nil {
		f.Close()
		return err
	}
	k.install(st, f, id)
	return nil
}

// errClosed is returned by every operation after Close.
var errClosed = errors.New("keystore is closed")

// refresh makes k.st current: it reloads the state file when another writer
// has replaced it (one stat per call), and runs maintenance (purge, automatic
// rotation) when some key is due. Caller holds mu.
func (k *Keystore) refresh(ctx context.Context) error {
	if k.closed {
		return errClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	id, err := statID(k.statePath)
	if err != nil {
		return fmt.Errorf("keystore %s: %w", k.dir, err)
	}
	if id != k.heldID {
		if err := k.reload(); err != nil {
			return err
		}
	}
	if !k.due.IsZero() {
		now := k.now()
		if !now.Before(k.due) && !now.Before(k.retryAt) {
			if _, err := k.mutate(ctx, func(*state, time.Time) (bool, error) { return false, nil }); err != nil {
				if ctx.Err() != nil {
					// The caller gave up while waiting for the lock;
					// that is not a maintenance failure.
					return ctx.Err()
				}
				// The logical view stays right (expired keys are treated as
				// gone on access); only the persisted purge/rotation waits.
				k.retryAt = now.Add(maintenanceRetry)
				k.warn(fmt.Sprintf("keystore %s: maintenance (key purge / automatic rotation) failed, will retry: %v", k.dir, err))
			}
		}
	}
	return nil
}

// reload reads the state file another writer installed. Caller holds mu.
func (k *Keystore) reload() error {
	f, err := os.Open(k.statePath)
	if err != nil {
		return fmt.Errorf("keystore %s: %w", k.dir, err)
	}
	st, id, err := readState(f)
	if err != nil {
		f.Close()
		return fmt.Errorf("keystore %s: %w", k.dir, err)
	}
	if !st.Protection.equal(k.st.Protection) {
		// Someone re-created the keystore in place. Our KEK must still
		// open it, else nothing in it is usable by us.
		if err := verifyKEK(k.mk, st.Protection); err != nil {
			f.Close()
			return fmt.Errorf("keystore %s was replaced by one with a different passphrase or root key; reopen it", k.dir)
		}
	}
	k.install(st, f, id)
	return nil
}

// mutate applies fn to a copy of the current state under the lock and writes
// the result if fn, or maintenance, changed anything. Caller holds mu.
func (k *Keystore) mutate(ctx context.Context, fn func(st *state, now time.Time) (bool, error)) (*state, error) {
	if k.closed {
		return nil, errClosed
	}
	if err := k.lock.lock(ctx); err != nil {
		return nil, err
	}
	defer k.lock.unlock()
	id, err := statID(k.statePath)
	if err != nil {
		return nil, fmt.Errorf("keystore %s: %w", k.dir, err)
	}
	if id != k.heldID {
		if err := k.reload(); err != nil {
			return nil, err
		}
	}
	return k.mutateHeld(fn)
}

// mutateHeld is mutate with the lock held and k.st current.
func (k *Keystore) mutateHeld(fn func(st *state, now time.Time) (bool, error)) (*state, error) {
	now := k.now().UTC()
	st := k.st.clone()
	maintained, err := k.maintain(st, now)
	if err != nil {
		return nil, err
	}
	changed, err := fn(st, now)
	if err != nil {
		return nil, err
	}
	if !changed && !maintained {
		return k.st, nil
	}
	if err := k.write(st); err != nil {
		return nil, err
	}
	k.retryAt = time.Time{}
	return st, nil
}

// maintain purges keys whose deletion window has passed and rotates keys
// whose automatic rotation is due.
func (k *Keystore) maintain(st *state, now time.Time) (bool, error) {
	changed := false
	for id, rec := range st.Keys {
		if rec.expired(now) {
			k.destroyInStore(rec)
			st.purge(id)
			changed = true
			continue
		}
		if rec.materialExpires() && !now.Before(rec.Import.ValidTo) && rec.hasMaterial() {
			k.deleteMaterial(rec)
			changed = true
		}
		if rec.rotationDue(now) {
			if err := k.addVersion(rec, now, rotationAutomatic); err != nil {
				return false, err
			}
			rec.Rotation.Base = now
			changed = true
		}
	}
	for id, p := range st.Imports {
		// Kept a day past expiry, so that using one says it expired.
		if !now.Before(p.ValidTo.Add(kms.ImportParametersValidity)) {
			delete(st.Imports, id)
			changed = true
		}
	}
	return changed, nil
}

// How a version came to be, as ListKeyRotations names it.
const (
	rotationAutomatic = "AUTOMATIC"
	rotationOnDemand  = "ON_DEMAND"
)

// addVersion generates new backing material for rec and makes it current;
// rotation says how ("" for a key's first material).
func (k *Keystore) addVersion(rec *keyRecord, now time.Time, rotation string) error {
	raw := make([]byte, 32)
	defer kms.Zero(raw)
	if _, err := rand.Read(raw); err != nil {
		return fmt.Errorf("generate key material: %w", err)
	}
	v := len(rec.Versions) + 1
	sealed, err := k.mk.seal(raw, materialAADFor(rec.ID, v))
	if err != nil {
		return err
	}
	rec.Versions = append(rec.Versions, versionRecord{Version: v, Created: now, Material: sealed, Rotation: rotation})
	rec.CurrentVersion = v
	if v > 1 {
		rec.Rotation.Last = now
	}
	return nil
}

// aead returns the cipher for one version of rec's material, from the cache
// or by unsealing it. Caller holds mu.
func (k *Keystore) aead(rec *keyRecord, version int) (cipher.AEAD, error) {
	ak := aeadKey{key: rec.uuid, version: uint32(version)}
	if a, ok := k.aeads[ak]; ok {
		return a, nil
	}
	if version < 1 || version > len(rec.Versions) {
		return nil, kms.Errorf(kms.CodeInvalidCiphertext, "key %s has no material version %d", rec.ID, version)
	}
	raw, err := k.mk.open(rec.Versions[version-1].Material, materialAADFor(rec.ID, version))
	if err != nil {
		return nil, kms.Errorf(kms.CodeInternal, "key %s material version %d does not authenticate under the keystore's key-encryption key", rec.ID, version)
	}
	defer kms.Zero(raw)
	block, err := aes.NewCipher(raw)
	if err != nil {
		return nil, kms.Errorf(kms.CodeInternal, "key %s material version %d: %v", rec.ID, version, err)
	}
	a, err := cipher.NewGCM(block)
	if err != nil {
		return nil, kms.Errorf(kms.CodeInternal, "key %s material version %d: %v", rec.ID, version, err)
	}
	k.aeads[ak] = a
	return a, nil
}
