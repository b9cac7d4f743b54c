// Package compose is kmsfs's composition root: it builds the concrete
// pieces a command runs on (a local or S3 backend, the embedded keystore or
// a remote AWS-KMS-API client, the key cache and the KMS middleware in front
// of it) and hands them to volume, which knows them only by their interfaces
// (backend.Backend, kms.Crypto, kms.Admin). It is the one package besides
// cmd/kmsfs that links every implementation, so the AWS SDK and the cgo
// PKCS#11 binding stay out of volume and fs.
//
// It reads no environment variable: cmd/kmsfs resolves flags and the
// environment into the options here.
package compose
