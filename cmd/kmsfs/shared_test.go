package main

import "testing"

func TestSharedMetaDropsThePassword(t *testing.T) {
	for in, want := range map[string]string{
		"": "",
		"postgres://kmsfs:s3cret@db.example/vault?sslmode=verify-full": "postgres://kmsfs@db.example/vault?sslmode=verify-full",
		"postgres://kmsfs@db.example/vault":                            "postgres://kmsfs@db.example/vault",
		"host=db.example password=x dbname=vault":                      "host=db.example dbname=vault",
		"host=db.example dbname=vault":                                 "host=db.example dbname=vault",
	} {
		c := commonFlags{meta: in}
		if got := c.sharedMeta(); got != want {
			t.Errorf("sharedMeta(%q) = %q, want %q", in, got, want)
		}
	}
}
