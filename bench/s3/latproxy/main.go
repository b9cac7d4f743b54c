// Command latproxy forwards TCP connections to a target and delays each
// request by a fixed time: the first bytes a client sends after the
// server's last answer (a new HTTP request on a kept-alive connection) wait
// -delay before they are passed on. bench/shared.sh puts it in front of
// versitygw to give the loopback gateway the round trip of a real S3
// endpoint (AWS S3 answers small requests in about 10–30 ms).
//
//	latproxy -listen 127.0.0.1:PORT -target 127.0.0.1:GWPORT -delay 10ms
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sync/atomic"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	target := flag.String("target", "", "address to forward to")
	delay := flag.Duration("delay", 10*time.Millisecond, "added to every request")
	flag.Parse()
	if *target == "" {
		fmt.Fprintln(os.Stderr, "latproxy: -target is required")
		os.Exit(2)
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("latproxy: %v", err)
	}
	fmt.Println(l.Addr())
	for {
		c, err := l.Accept()
		if err != nil {
			log.Fatalf("latproxy: accept: %v", err)
		}
		go serve(c, *target, *delay)
	}
}

// serve forwards one client connection. answered is set whenever the
// server sent something and cleared when the client's next bytes went on,
// so each request-response turn is delayed once, however many reads its
// request body takes.
func serve(c net.Conn, target string, delay time.Duration) {
	defer c.Close()
	s, err := net.Dial("tcp", target)
	if err != nil {
		log.Printf("latproxy: dial %s: %v", target, err)
		return
	}
	defer s.Close()
	var answered atomic.Bool
	answered.Store(true)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			n, err := s.Read(buf)
			if n > 0 {
				answered.Store(true)
				if _, werr := c.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		c.Close()
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if answered.Swap(false) {
				time.Sleep(delay)
			}
			if _, werr := s.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err == io.EOF {
				// Half-closed: the answer may still come.
				s.(*net.TCPConn).CloseWrite()
				<-done
			}
			return
		}
	}
}
