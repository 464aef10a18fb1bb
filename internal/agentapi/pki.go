package agentapi

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/fsutil"
)

// The control plane's certificate is pinned, not chained to a CA: an
// enrolment token carries the SHA-256 of the certificate the agent must
// find, as kubeadm's join token carries its CA hash. A control plane
// without an operator's certificate makes its own, once, and keeps it.

// Fingerprint is the hex SHA-256 of a DER certificate.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// LoadOrCreateCert returns the TLS certificate in certFile/keyFile; when
// both are absent it creates a self-signed ECDSA P-256 one valid for ten
// years for hosts (names or IPs) and writes the two files (key 0600).
func LoadOrCreateCert(certFile, keyFile string, hosts []string) (tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err == nil {
		return cert, nil
	}
	if _, serr := os.Stat(certFile); serr == nil {
		return tls.Certificate{}, fmt.Errorf("tls: %w", err) // there, but unusable: never overwrite
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "tandem control plane"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := os.MkdirAll(filepath.Dir(certFile), 0o700); err != nil {
		return tls.Certificate{}, err
	}
	if err := fsutil.WriteFileAtomic(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := fsutil.WriteFileAtomic(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return tls.Certificate{}, err
	}
	return tls.LoadX509KeyPair(certFile, keyFile)
}

// PinnedTLS returns a client TLS config that accepts exactly the server
// certificate whose fingerprint is pin, whatever its names or issuer.
func PinnedTLS(pin string) *tls.Config {
	pin = strings.ToLower(pin)
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The chain is not verified against CAs: the pin below is a
		// stronger check than a CA-issued name, and is all that is used.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("tls: the server sent no certificate")
			}
			if subtle.ConstantTimeCompare([]byte(Fingerprint(raw[0])), []byte(pin)) != 1 {
				return fmt.Errorf("%w: the server's certificate %s… is not the pinned %s…", ErrPinMismatch, Fingerprint(raw[0])[:16], pin[:min(16, len(pin))])
			}
			return nil
		},
	}
}

// An enrolment token is "tdm1.<secret>.<fingerprint>": the one-time secret
// (base64url, 32 bytes) and the fingerprint of the control plane's
// certificate. Only the secret's hash is stored.
const tokenPrefix = "tdm1"

// ErrPinMismatch: the server's certificate is not the one pinned (the
// wrong control plane, or a token of another one).
var ErrPinMismatch = errors.New("tls: certificate pin mismatch")

// ErrBadToken reports a malformed enrolment token.
var ErrBadToken = errors.New("malformed enrolment token")

// NewEnrollToken returns a token for a control plane with certificate
// fingerprint pin, and the hash to store.
func NewEnrollToken(pin string) (token, hash string, err error) {
	secret, err := randomSecret()
	if err != nil {
		return "", "", err
	}
	return tokenPrefix + "." + secret + "." + pin, HashSecret(secret), nil
}

// ParseEnrollToken splits a token into its secret and pin.
func ParseEnrollToken(token string) (secret, pin string, err error) {
	parts := strings.Split(strings.TrimSpace(token), ".")
	if len(parts) != 3 || parts[0] != tokenPrefix || len(parts[1]) < 32 || len(parts[2]) != 64 {
		return "", "", ErrBadToken
	}
	if _, err := hex.DecodeString(parts[2]); err != nil {
		return "", "", ErrBadToken
	}
	return parts[1], strings.ToLower(parts[2]), nil
}

// NewCredential returns a fresh agent secret and its hash.
func NewCredential() (secret, hash string, err error) {
	secret, err = randomSecret()
	return secret, HashSecret(secret), err
}

// HashSecret is how secrets are stored: hex SHA-256 (the secrets are 256
// random bits, so no salt or stretching is needed).
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// SameHash compares two hashes in constant time.
func SameHash(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

func randomSecret() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}
