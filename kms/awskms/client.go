// Package awskms is the remote KMS client: it implements kms.Crypto and
// kms.Admin over the AWS KMS API (github.com/aws/aws-sdk-go-v2/service/kms),
// against AWS KMS itself or any service that speaks its API, such as
// `kmsfs kms serve`.
//
// Throttling and transient failures are retried with jittered exponential
// backoff; every call is bounded by a timeout; AWS errors come back as
// *kms.Error with the AWS error code, so errors.Is(err, kms.ErrDisabled)
// works, and a KMS that cannot be reached is kms.ErrUnavailable.
package awskms

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"

	"github.com/kmsfs/kmsfs/kms"
)

// Compile-time checks: the client is a complete KMS.
var (
	_ kms.Crypto = (*Client)(nil)
	_ kms.Admin  = (*Client)(nil)
)

// Defaults for Options.
const (
	DefaultTimeout        = 30 * time.Second
	DefaultAttemptTimeout = 10 * time.Second
	DefaultMaxAttempts    = 10
	DefaultBaseBackoff    = 50 * time.Millisecond
	DefaultMaxBackoff     = 2 * time.Second
)

// Options configures a Client. Zero values take the defaults.
type Options struct {
	// Endpoint is the KMS URL, e.g. http://127.0.0.1:8900; "" means AWS's
	// regional endpoint.
	Endpoint string
	// Region to sign for; "" takes it from the AWS config chain.
	Region string
	// Timeout bounds each call, retries included (default 30s).
	Timeout time.Duration
	// AttemptTimeout bounds each HTTP attempt (default 10s).
	AttemptTimeout time.Duration
	// MaxAttempts is the number of attempts per call, first included
	// (default 10). The SDK default of 3 gives up too soon under a quota.
	MaxAttempts int
	// BaseBackoff and MaxBackoff shape the full-jitter exponential backoff:
	// attempt i waits a uniform random time in [0, min(Max, Base*2^i)).
	BaseBackoff time.Duration
	MaxBackoff  time.Duration
	// Credentials overrides the standard AWS credential chain (environment,
	// shared files, SSO, IMDS) when set.
	Credentials aws.CredentialsProvider
	// MaxConnsPerHost bounds keep-alive connections (default 64).
	MaxConnsPerHost int
}

// Client is a kms.Crypto and kms.Admin over the AWS KMS API.
type Client struct {
	api      *awskms.Client
	endpoint string
	timeout  time.Duration
}

// New builds a client from the standard AWS configuration chain
// (config.LoadDefaultConfig) and opts.
func New(ctx context.Context, opts Options) (*Client, error) {
	opts = withDefaults(opts)
	conns := opts.MaxConnsPerHost
	// AWS_CA_BUNDLE makes the SDK add root CAs to the HTTP client's
	// transport, which only works on a BuildableClient; customise the
	// transport through it rather than passing an *http.Client.
	httpClient := awshttp.NewBuildableClient().
		WithTimeout(opts.AttemptTimeout).
		WithTransportOptions(func(t *http.Transport) {
			t.MaxIdleConns = conns
			t.MaxIdleConnsPerHost = conns
		})
	loadOpts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(httpClient),
		config.WithRetryer(func() aws.Retryer { return newRetryer(opts) }),
	}
	if opts.Region != "" {
		loadOpts = append(loadOpts, config.WithRegion(opts.Region))
	}
	if opts.Credentials != nil {
		loadOpts = append(loadOpts, config.WithCredentialsProvider(opts.Credentials))
	}
	cfg, err := config.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, fmt.Errorf("kms client: load AWS config: %w", err)
	}
	if cfg.Region == "" {
		return nil, errors.New("kms client: no region: give --kms-region or set AWS_REGION")
	}
	// Fetch credentials now, so a missing or broken credential chain is one
	// clear error at start-up rather than a failure of every later call.
	cctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	if _, err := cfg.Credentials.Retrieve(cctx); err != nil {
		return nil, fmt.Errorf("kms client: no usable AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE): %w", err)
	}
	return newClient(cfg, opts), nil
}

func withDefaults(o Options) Options {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.AttemptTimeout <= 0 {
		o.AttemptTimeout = DefaultAttemptTimeout
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.BaseBackoff <= 0 {
		o.BaseBackoff = DefaultBaseBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.MaxConnsPerHost <= 0 {
		o.MaxConnsPerHost = 64
	}
	return o
}

func newClient(cfg aws.Config, opts Options) *Client {
	api := awskms.NewFromConfig(cfg, func(o *awskms.Options) {
		if opts.Endpoint != "" {
			o.BaseEndpoint = aws.String(opts.Endpoint)
		}
	})
	endpoint := opts.Endpoint
	if endpoint == "" {
		endpoint = "AWS KMS in " + cfg.Region
	}
	return &Client{api: api, endpoint: endpoint, timeout: opts.Timeout}
}

// newRetryer is the SDK's standard retryer (it knows ThrottlingException and
// the transient HTTP and connection errors) with more attempts, our backoff,
// and no client-side retry quota: under a server quota every caller is
// throttled at once, and the SDK's shared retry token bucket would then fail
// calls that a little patience lets succeed.
func newRetryer(opts Options) aws.Retryer {
	return retry.NewStandard(func(o *retry.StandardOptions) {
		o.MaxAttempts = opts.MaxAttempts
		o.MaxBackoff = opts.MaxBackoff
		o.Backoff = jitterBackoff{base: opts.BaseBackoff, max: opts.MaxBackoff}
		o.RateLimiter = ratelimit.None
	})
}

// jitterBackoff is "full jitter" exponential backoff: a uniform random delay
// in [0, min(max, base*2^attempt)), which spreads out clients that were
// throttled together.
type jitterBackoff struct{ base, max time.Duration }

func (j jitterBackoff) BackoffDelay(attempt int, _ error) (time.Duration, error) {
	ceiling := j.max
	if attempt < 30 {
		ceiling = min(j.max, j.base<<attempt)
	}
	if ceiling <= 0 {
		return 0, nil
	}
	return rand.N(ceiling), nil
}

// call runs fn with the call timeout and maps its error.
func call[T any](c *Client, ctx context.Context, op, key string, fn func(ctx context.Context) (T, error)) (T, error) {
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	out, err := fn(cctx)
	if err != nil {
		var zero T
		return zero, c.mapError(ctx, cctx, op, key, err)
	}
	return out, nil
}

// mapError turns an SDK error into one line carrying a *kms.Error.
func (c *Client) mapError(parent, cctx context.Context, op, key string, err error) error {
	what := "KMS " + op
	if key != "" {
		what += " " + key
	}
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		return fmt.Errorf("%s: %w", what, &kms.Error{Code: apiErr.ErrorCode(), Message: apiErr.ErrorMessage()})
	}
	if perr := parent.Err(); perr != nil {
		return fmt.Errorf("%s: %w", what, perr)
	}
	if cctx.Err() != nil {
		return fmt.Errorf("%s: %w", what, &kms.Error{Code: kms.CodeUnavailable,
			Message: fmt.Sprintf("no answer from %s within %s", c.endpoint, c.timeout)})
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return fmt.Errorf("%s: %w", what, &kms.Error{Code: kms.CodeUnavailable,
			Message: fmt.Sprintf("cannot reach %s: %v", c.endpoint, opErr)})
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return fmt.Errorf("%s: %w", what, &kms.Error{Code: kms.CodeUnavailable,
			Message: fmt.Sprintf("cannot reach %s: %v", c.endpoint, netErr)})
	}
	var respErr *awshttp.ResponseError
	if errors.As(err, &respErr) && respErr.HTTPStatusCode() >= 500 {
		return fmt.Errorf("%s: %w", what, &kms.Error{Code: kms.CodeUnavailable,
			Message: fmt.Sprintf("%s answered HTTP %d", c.endpoint, respErr.HTTPStatusCode())})
	}
	return fmt.Errorf("%s: %w", what, err)
}
