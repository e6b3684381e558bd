// tableflip-server: the peer of the deploy benchmark (lameduck-bench, section 7). A Go
// net/http server answering `GET /` with "ok", upgraded in place on SIGHUP with
// cloudflare/tableflip, the way its README does it: the new process inherits the listener and
// writes the pid file once ready, and the old one shuts its server down gracefully. SIGTERM
// stops it. Prints `READY <addr>` once it serves.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	pidFile := flag.String("pid-file", "", "pid file, rewritten by the new process")
	flag.Parse()

	upg, err := tableflip.New(tableflip.Options{PIDFile: *pidFile, UpgradeTimeout: 60 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer upg.Stop()

	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGHUP, syscall.SIGTERM)
		for s := range sig {
			if s == syscall.SIGTERM {
				upg.Stop()
				return
			}
			if err := upg.Upgrade(); err != nil {
				fmt.Fprintln(os.Stderr, "upgrade failed:", err)
			}
		}
	}()

	ln, err := upg.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	server := &http.Server{Handler: mux}
	go server.Serve(ln)

	if err := upg.Ready(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("READY %s\n", ln.Addr())
	<-upg.Exit()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	server.Shutdown(ctx)
}
