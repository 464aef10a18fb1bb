package agentapi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/tandem-ci/tandem/internal/image"
)

// The Client is an image.Source: an agent fetches the images the control
// plane names from it (image.Store.Fetch).
var _ image.Source = (*Client)(nil)

// Manifest returns the manifest.json of an image the control plane names.
func (c *Client) Manifest(ctx context.Context, id string) ([]byte, error) {
	resp, err := c.get(ctx, c.http, PathImages+url.PathEscape(id)+"/manifest")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(io.LimitReader(resp.Body, 4<<20))
}

// File streams one file of an image the control plane names, from offset
// on, in the sparse stream format (image.WriteSparse). The stream has no
// deadline: image.Store.Fetch cuts it when it stalls.
func (c *Client) File(ctx context.Context, id, name string, offset int64) (io.ReadCloser, error) {
	resp, err := c.get(ctx, c.long, PathImages+url.PathEscape(id)+"/files/"+url.PathEscape(name)+
		"?offset="+strconv.FormatInt(offset, 10))
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// get fetches from the current address only: image.Store.Fetch resumes a
// broken transfer, from whichever address the stream has made current by
// then.
func (c *Client) get(ctx context.Context, hc *http.Client, path string) (*http.Response, error) {
	req, err := c.request(ctx, c.addrs[c.current()], path, nil)
	if err != nil {
		return nil, err
	}
	req.Method = http.MethodGet
	req.Header.Del("Content-Type")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	if err := statusError(resp); err != nil {
		resp.Body.Close()
		switch code := resp.StatusCode; {
		case code == http.StatusNotFound:
			return nil, fmt.Errorf("%w: %w", image.ErrNotFound, err)
		case code/100 == 4 && code != http.StatusRequestTimeout && code != http.StatusTooManyRequests:
			return nil, fmt.Errorf("%w: %w", image.ErrRefused, err)
		}
		return nil, err
	}
	return resp, nil
}
