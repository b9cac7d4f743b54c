package integration

import (
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/awskms"
)

// putPolicy writes doc to a file and sets it as the key policy of keyID as akid.
func (h *kmsHarness) putPolicy(akid, keyID, doc string) error {
	h.t.Helper()
	if err := os.WriteFile(filepath.Join(h.dir, "policy.json"), []byte(doc), 0o600); err != nil {
		h.t.Fatal(err)
	}
	_, err := h.aws(akid, "put-key-policy", "--key-id", keyID, "--policy-name", "default", "--policy", "file://policy.json")
	return err
}

func (h *kmsHarness) listKeyARNs(akid string) string {
	h.t.Helper()
	var out struct{ Keys []struct{ KeyArn string } }
	h.awsJSON(akid, &out, "list-keys")
	var arns []string
	for _, k := range out.Keys {
		arns = append(arns, k.KeyArn)
	}
	return strings.Join(arns, " ")
}

func (h *kmsHarness) listAliasARNs(akid string) string {
	h.t.Helper()
	var out struct{ Aliases []struct{ AliasArn string } }
	h.awsJSON(akid, &out, "list-aliases")
	var arns []string
	for _, a := range out.Aliases {
		arns = append(arns, a.AliasArn)
	}
	return strings.Join(arns, " ")
}

// TestKMSAccountsAreIsolated: every key, alias and listing belongs to the
// caller's account; another account reaches a key only by ARN, only where
// the key policy allows, and only for the operations AWS allows across
// accounts.
func TestKMSAccountsAreIsolated(t *testing.T) {
	kmsAWS(t)
	h := kmsStartServer(t)
	ctx := context.Background()
	aliceID, aliceARN := h.createKey(kmsAliceKey)
	malID, malARN := h.createKey(kmsMalloryKey)
	if !strings.HasPrefix(malARN, "arn:aws:kms:"+kmsRegion+":"+kmsOtherAcct+":key/") {
		t.Fatalf("a key created by account %s has ARN %s", kmsOtherAcct, malARN)
	}
	// Each account administers its own key under the default policy.
	if _, err := h.aws(kmsMalloryKey, "enable-key-rotation", "--key-id", malID); err != nil {
		t.Fatalf("mallory on her own key: %v", err)
	}
	if _, err := h.aws(kmsAliceKey, "enable-key-rotation", "--key-id", aliceID); err != nil {
		t.Fatalf("alice on her own key: %v", err)
	}

	// Listings show the caller's account only.
	if got := h.listKeyARNs(kmsMalloryKey); got != malARN {
		t.Fatalf("mallory's list-keys: %s", got)
	}
	if got := h.listKeyARNs(kmsBobKey); got != aliceARN {
		t.Fatalf("bob's list-keys: %s", got)
	}

	// The same alias name in both accounts; each resolves in its own.
	for akid, id := range map[string]string{kmsMalloryKey: malID, kmsAliceKey: aliceID} {
		if _, err := h.aws(akid, "create-alias", "--alias-name", "alias/shared", "--target-key-id", id); err != nil {
			t.Fatalf("create-alias as %s: %v", akid, err)
		}
	}
	var enc struct{ KeyId, CiphertextBlob string }
	h.awsJSON(kmsBobKey, &enc, "encrypt", "--key-id", "alias/shared", "--plaintext", "aGVsbG8=")
	if enc.KeyId != aliceARN {
		t.Fatalf("bob's alias/shared encrypted under %s, want his account's %s", enc.KeyId, aliceARN)
	}
	if got := h.listAliasARNs(kmsMalloryKey); got != "arn:aws:kms:"+kmsRegion+":"+kmsOtherAcct+":alias/shared" {
		t.Fatalf("mallory's list-aliases: %s", got)
	}
	if got := h.listAliasARNs(kmsAliceKey); strings.Contains(got, kmsOtherAcct) {
		t.Fatalf("alice's list-aliases shows the other account: %s", got)
	}
	// Mallory cannot point an alias of hers at alice's key, nor reach it by
	// bare ID or alias name.
	h.awsFails(kmsMalloryKey, "AccessDeniedException", "create-alias", "--alias-name", "alias/stolen", "--target-key-id", aliceARN)
	h.awsFails(kmsMalloryKey, "NotFoundException", "describe-key", "--key-id", aliceID)
	h.awsFails(kmsMalloryKey, "NotFoundException", "describe-key", "--key-id", "alias/"+"nope")

	// By ARN, the key policy decides: denied under alice's default policy.
	h.awsFails(kmsMalloryKey, "AccessDeniedException", "describe-key", "--key-id", aliceARN)
	ct, _ := base64.StdEncoding.DecodeString(enc.CiphertextBlob)
	mc := h.client(kmsMalloryKey, awskms.Options{})
	if _, _, err := mc.Decrypt(ctx, "", ct, nil); !errors.Is(err, kms.ErrAccessDenied) {
		t.Fatalf("mallory decrypting alice's ciphertext: %v", err)
	}
	// Alice's policy lets mallory's account do everything: the operations
	// AWS allows across accounts now work by ARN, the others still do not.
	policy := `{"Version":"2012-10-17","Statement":[
	 {"Sid":"Home","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + kmsAccount + `:root"},"Action":"kms:*","Resource":"*"},
	 {"Sid":"Partner","Effect":"Allow","Principal":{"AWS":"` + kmsOtherAcct + `"},"Action":"kms:*","Resource":"*"}]}`
	if err := h.putPolicy(kmsAliceKey, aliceID, policy); err != nil {
		t.Fatal(err)
	}
	if pt, _, err := mc.Decrypt(ctx, "", ct, nil); err != nil || string(pt) != "hello" {
		t.Fatalf("mallory decrypting under a policy that allows her account: %q %v", pt, err)
	}
	var desc struct {
		KeyMetadata struct{ Arn, AWSAccountId string }
	}
	h.awsJSON(kmsMalloryKey, &desc, "describe-key", "--key-id", aliceARN)
	if desc.KeyMetadata.AWSAccountId != kmsAccount {
		t.Fatalf("describe-key across accounts: %+v", desc)
	}
	h.awsFails(kmsMalloryKey, "NotFoundException", "encrypt", "--key-id", aliceID, "--plaintext", "aGVsbG8=")
	h.awsFails(kmsMalloryKey, "AccessDeniedException", "disable-key", "--key-id", aliceARN)
	h.awsFails(kmsMalloryKey, "AccessDeniedException", "put-key-policy", "--key-id", aliceARN, "--policy-name", "default", "--policy", "file://policy.json")
	if got := h.listKeyARNs(kmsMalloryKey); got != malARN {
		t.Fatalf("mallory's list-keys after being allowed on alice's key: %s", got)
	}
}

// TestKMSRoleSessionMatchesRole: a policy or grant naming a role covers the
// role's sessions, whose aws:PrincipalArn is the role's ARN.
func TestKMSRoleSessionMatchesRole(t *testing.T) {
	kmsAWS(t)
	h := kmsStartServer(t)
	ctx := context.Background()
	id, arn := h.createKey(kmsAliceKey)
	policy := `{"Version":"2012-10-17","Statement":[
	 {"Sid":"Admin","Effect":"Allow","Principal":{"AWS":"` + kmsAliceARN + `"},"Action":"kms:*","Resource":"*"},
	 {"Sid":"Deployer","Effect":"Allow","Principal":{"AWS":"` + kmsRoleARN + `"},"Action":["kms:Encrypt","kms:Decrypt"],"Resource":"*",
	  "Condition":{"ArnEquals":{"aws:PrincipalArn":"` + kmsRoleARN + `"}}}]}`
	if err := h.putPolicy(kmsAliceKey, id, policy); err != nil {
		t.Fatal(err)
	}
	var enc struct{ CiphertextBlob string }
	h.awsJSON(kmsSessionKey, &enc, "encrypt", "--key-id", arn, "--plaintext", "aGVsbG8=")
	ct, _ := base64.StdEncoding.DecodeString(enc.CiphertextBlob)
	sc := h.client(kmsSessionKey, awskms.Options{})
	if pt, _, err := sc.Decrypt(ctx, "", ct, nil); err != nil || string(pt) != "hello" {
		t.Fatalf("the role's session decrypting: %q %v", pt, err)
	}
	// Not other actions, and not other principals of the account.
	h.awsFails(kmsSessionKey, "AccessDeniedException", "generate-data-key", "--key-id", arn, "--key-spec", "AES_256")
	h.awsFails(kmsBobKey, "AccessDeniedException", "encrypt", "--key-id", arn, "--plaintext", "aGVsbG8=")
	// A grant to the role covers its session too.
	if _, err := h.aws(kmsAliceKey, "create-grant", "--key-id", arn, "--grantee-principal", kmsRoleARN, "--operations", "GenerateDataKey"); err != nil {
		t.Fatal(err)
	}
	if dk, err := sc.GenerateDataKey(ctx, arn, 32, nil); err != nil {
		t.Fatalf("the role's session with a grant to the role: %v", err)
	} else {
		dk.Zero()
	}
	if !strings.Contains(h.auditLog(), `"principal":"`+kmsSessionARN+`"`) {
		t.Error("the session's requests are not audited under its own ARN")
	}
}

// TestKMSPolicyConditionKeys: a key policy using the condition keys and
// operators the server evaluates allows and denies as AWS documents; a key
// or operator it does not evaluate is refused when the policy is set.
func TestKMSPolicyConditionKeys(t *testing.T) {
	kmsAWS(t)
	h := kmsStartServer(t)
	id, arn := h.createKey(kmsAliceKey)
	if _, err := h.aws(kmsAliceKey, "create-alias", "--alias-name", "alias/blocked", "--target-key-id", id); err != nil {
		t.Fatal(err)
	}
	policy := `{"Version":"2012-10-17","Statement":[
	 {"Sid":"Home","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + kmsAccount + `:root"},"Action":"kms:*","Resource":"*"},
	 {"Sid":"PartnerFromLoopbackLately","Effect":"Allow","Principal":{"AWS":"` + kmsMalloryARN + `"},"Action":"kms:Encrypt","Resource":"*",
	  "Condition":{"IpAddress":{"aws:SourceIp":"127.0.0.0/8"},"DateGreaterThan":{"aws:CurrentTime":"2020-01-01T00:00:00Z"},
	               "StringEquals":{"kms:KeySpec":"SYMMETRIC_DEFAULT","kms:KeyUsage":"ENCRYPT_DECRYPT"}}},
	 {"Sid":"PartnerNeverFromElsewhere","Effect":"Deny","Principal":{"AWS":"` + kmsMalloryARN + `"},"Action":"kms:Decrypt","Resource":"*",
	  "Condition":{"NotIpAddress":{"aws:SourceIp":"10.0.0.0/8"}}},
	 {"Sid":"BobOnlyOverTLS","Effect":"Deny","Principal":{"AWS":"` + kmsBobARN + `"},"Action":"kms:Decrypt","Resource":"*",
	  "Condition":{"Bool":{"aws:SecureTransport":"false"}}},
	 {"Sid":"NoGeneratedKeysForBob","Effect":"Deny","Principal":{"AWS":"` + kmsBobARN + `"},"Action":"kms:GenerateDataKey","Resource":"*",
	  "Condition":{"StringEquals":{"kms:KeyOrigin":"AWS_KMS"}}},
	 {"Sid":"BobOnlyThroughAService","Effect":"Deny","Principal":{"AWS":"` + kmsBobARN + `"},"Action":"kms:ReEncrypt*","Resource":"*",
	  "Condition":{"StringNotEquals":{"kms:ViaService":"s3.` + kmsRegion + `.amazonaws.com"}}},
	 {"Sid":"NoGrantsForPeople","Effect":"Deny","Principal":"*","Action":"kms:CreateGrant","Resource":"*",
	  "Condition":{"Bool":{"kms:GrantIsForAWSResource":"false"}}},
	 {"Sid":"NotThroughTheBlockedAlias","Effect":"Deny","Principal":"*","Action":"kms:Encrypt","Resource":"*",
	  "Condition":{"StringEquals":{"kms:RequestAlias":"alias/blocked"}}},
	 {"Sid":"QuarantinedKeysStayQuiet","Effect":"Deny","Principal":"*","Action":"kms:GenerateDataKeyWithoutPlaintext","Resource":"*",
	  "Condition":{"ForAnyValue:StringEquals":{"kms:ResourceAliases":"alias/quarantine"}}},
	 {"Sid":"FullDeletionWindow","Effect":"Deny","Principal":"*","Action":"kms:ScheduleKeyDeletion","Resource":"*",
	  "Condition":{"NumericLessThan":{"kms:ScheduleKeyDeletionPendingWindowInDays":"30"}}},
	 {"Sid":"AliceIsTheAdmin","Effect":"Deny","Principal":"*","Action":"kms:DisableKey","Resource":"*",
	  "Condition":{"ArnNotEquals":{"aws:PrincipalArn":"` + kmsAliceARN + `"}}}]}`
	if err := h.putPolicy(kmsAliceKey, id, policy); err != nil {
		t.Fatalf("a policy with every supported condition key: %v", err)
	}
	encrypt := func(akid, keyID string) error {
		_, err := h.aws(akid, "encrypt", "--key-id", keyID, "--plaintext", "aGVsbG8=")
		return err
	}
	// Allowed from loopback, after 2020, for a symmetric key.
	if err := encrypt(kmsMalloryKey, arn); err != nil {
		t.Fatalf("mallory from 127.0.0.1: %v", err)
	}
	var enc struct{ CiphertextBlob string }
	h.awsJSON(kmsAliceKey, &enc, "encrypt", "--key-id", id, "--plaintext", "aGVsbG8=")
	ct, _ := base64.StdEncoding.DecodeString(enc.CiphertextBlob)
	os.WriteFile(filepath.Join(h.dir, "ct.bin"), ct, 0o600)
	decrypt := []string{"decrypt", "--ciphertext-blob", "fileb://ct.bin"}
	h.awsFails(kmsMalloryKey, "AccessDeniedException", decrypt...) // NotIpAddress Deny
	h.awsFails(kmsBobKey, "AccessDeniedException", decrypt...)     // not over TLS
	if _, err := h.aws(kmsAliceKey, decrypt...); err != nil {
		t.Fatalf("alice: %v", err)
	}
	h.awsFails(kmsBobKey, "AccessDeniedException", "generate-data-key", "--key-id", id, "--key-spec", "AES_256")
	if _, err := h.aws(kmsAliceKey, "generate-data-key", "--key-id", id, "--key-spec", "AES_256"); err != nil {
		t.Fatalf("alice generate-data-key: %v", err)
	}
	h.awsFails(kmsBobKey, "AccessDeniedException", "re-encrypt", "--ciphertext-blob", "fileb://ct.bin", "--destination-key-id", id)
	h.awsFails(kmsAliceKey, "AccessDeniedException", "create-grant", "--key-id", arn, "--grantee-principal", kmsBobARN, "--operations", "Decrypt")
	h.awsFails(kmsAliceKey, "AccessDeniedException", "encrypt", "--key-id", "alias/blocked", "--plaintext", "aGVsbG8=")
	if err := encrypt(kmsBobKey, id); err != nil {
		t.Fatalf("encrypt by key ID with an alias-scoped Deny: %v", err)
	}
	gdkwp := []string{"generate-data-key-without-plaintext", "--key-id", id, "--key-spec", "AES_256"}
	if _, err := h.aws(kmsAliceKey, gdkwp...); err != nil {
		t.Fatal(err)
	}
	if _, err := h.aws(kmsAliceKey, "create-alias", "--alias-name", "alias/quarantine", "--target-key-id", id); err != nil {
		t.Fatal(err)
	}
	h.awsFails(kmsAliceKey, "AccessDeniedException", gdkwp...)
	h.awsFails(kmsBobKey, "AccessDeniedException", "disable-key", "--key-id", id)
	h.awsFails(kmsAliceKey, "AccessDeniedException", "schedule-key-deletion", "--key-id", id, "--pending-window-in-days", "7")

	// Keys and operators the server does not evaluate are refused, naming
	// them, at PutKeyPolicy and CreateKey.
	for name, cond := range map[string]string{
		"aws:RequestTag/team": `{"StringEquals":{"aws:RequestTag/team":"red"}}`,
		"BinaryEquals":        `{"BinaryEquals":{"kms:KeyOrigin":"QVdTX0tNUw=="}}`,
	} {
		doc := `{"Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + kmsAccount + `:root"},"Action":"kms:*","Resource":"*"},
		 {"Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*","Condition":` + cond + `}]}`
		err := h.putPolicy(kmsAliceKey, id, doc)
		if err == nil || !strings.Contains(err.Error(), "MalformedPolicyDocumentException") || !strings.Contains(err.Error(), name) {
			t.Errorf("put-key-policy with %s: %v", name, err)
		}
		_, err = h.aws(kmsAliceKey, "create-key", "--policy", "file://policy.json")
		if err == nil || !strings.Contains(err.Error(), "MalformedPolicyDocumentException") || !strings.Contains(err.Error(), name) {
			t.Errorf("create-key with %s: %v", name, err)
		}
	}
}
