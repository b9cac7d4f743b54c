// Package server implements `kmsfs kms serve`: an HTTP server that speaks the
// AWS KMS JSON 1.1 protocol (POST /, X-Amz-Target: TrentService.<Op>) in front
// of a key store (the embedded keystore), so that the aws-sdk-go-v2 KMS client
// and the `aws kms` CLI work against it unchanged.
//
// Every request is authenticated with AWS Signature Version 4 against a fixed
// set of access keys, each mapped to a principal ARN whose account is the
// caller's account (keys, aliases and listings are per account); authorised by
// the key's policy and grants (the key store stores policies but does not
// evaluate them: this package does, with IAM's condition rules, refusing
// policies it cannot evaluate); rate limited per account for cryptographic
// operations; and recorded in a hash-chained, append-only audit log
// (kms/auditlog).
package server
