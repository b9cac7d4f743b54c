// Command rawsdk measures what the S3 server itself gives a Go client: one
// PutObject and one GetObject of the same bytes with aws-sdk-go-v2, the
// baseline the kmsfs S3 mount is compared with (bench/s3/run.sh).
//
//	rawsdk -endpoint http://127.0.0.1:7070 -bucket b -key k -file data [-cold]
//
// With -cold (root only) the page cache is dropped between the two, so that
// the server reads the object from disk, as it does for the cold read of the
// kmsfs mount it is compared with; without it the GET is served from the
// pages the PUT just wrote.
//
// It prints one JSON line: {"bytes":N,"put_s":..,"get_s":..,"put_mbps":..,"get_mbps":..}.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

func main() {
	endpoint := flag.String("endpoint", "", "S3 endpoint URL")
	bucket := flag.String("bucket", "", "bucket")
	key := flag.String("key", "rawsdk/object", "object key")
	file := flag.String("file", "", "file whose bytes are uploaded")
	cold := flag.Bool("cold", false, "drop the page cache between PUT and GET (needs root)")
	flag.Parse()
	if err := run(context.Background(), *endpoint, *bucket, *key, *file, *cold); err != nil {
		fmt.Fprintln(os.Stderr, "rawsdk:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, endpoint, bucket, key, file string, cold bool) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return err
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.UsePathStyle = true
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
			o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
			o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		}
	})
	start := time.Now()
	if _, err := client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String(key),
		Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data))),
	}); err != nil {
		return fmt.Errorf("put: %w", err)
	}
	put := time.Since(start)
	if cold {
		syscall.Sync()
		if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
			return fmt.Errorf("drop caches: %w", err)
		}
	}
	start = time.Now()
	out, err := client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		return fmt.Errorf("get: %w", err)
	}
	n, err := io.Copy(io.Discard, out.Body)
	out.Body.Close()
	if err != nil {
		return fmt.Errorf("get: %w", err)
	}
	get := time.Since(start)
	if n != int64(len(data)) {
		return fmt.Errorf("get: %d bytes, put %d", n, len(data))
	}
	mb := float64(len(data)) / 1e6
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"bytes": len(data), "put_s": put.Seconds(), "get_s": get.Seconds(),
		"put_mbps": mb / put.Seconds(), "get_mbps": mb / get.Seconds(),
	})
}
