// A JVM test client for the socket-LB tests, run as a single source file
// (`java tests/java/Probe.java MODE ...`) with the JVM's default settings:
// no -Djava.net.preferIPv4Stack, so on a kernel with IPv6 the JDK opens
// AF_INET6 sockets and reaches IPv4 addresses as IPv4-mapped ones
// (::ffff:a.b.c.d), as Java services in a cluster do.
//
//   java Probe.java http IP PORT COUNT   COUNT HTTP GETs, a new connection each
//   java Probe.java udp IP PORT COUNT    COUNT datagrams from one unconnected socket
//
// One line per attempt on stdout, for the test to judge:
//   ok <body's first line>              (http)
//   reply <body> from <address:port>    (udp; the JVM prints /10.96.0.10:53)
//   fail <exception>
// Addresses are IP literals (getByName does not resolve them).
// Every operation has a timeout, so a broken datapath fails instead of hanging.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.net.DatagramPacket;
import java.net.DatagramSocket;
import java.net.HttpURLConnection;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.URL;
import java.nio.charset.StandardCharsets;

public class Probe {
    static final int TIMEOUT_MS = 3000;

    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: java Probe.java http|udp IP PORT COUNT");
            System.exit(2);
        }
        String ip = args[1];
        int port = Integer.parseInt(args[2]);
        int count = Math.min(Integer.parseInt(args[3]), 1000);
        switch (args[0]) {
            case "http" -> {
                for (int i = 0; i < count; i++) System.out.println(httpGet(ip, port));
            }
            case "udp" -> udp(ip, port, count);
            default -> {
                System.err.println("unknown mode " + args[0]);
                System.exit(2);
            }
        }
    }

    static String httpGet(String ip, int port) {
        try {
            URL url = new URL("http", ip, port, "/");
            HttpURLConnection c = (HttpURLConnection) url.openConnection();
            c.setConnectTimeout(TIMEOUT_MS);
            c.setReadTimeout(TIMEOUT_MS);
            // A fresh connection per request, so every GET picks a backend.
            c.setRequestProperty("Connection", "close");
            int status = c.getResponseCode();
            try (BufferedReader r = new BufferedReader(
                    new InputStreamReader(c.getInputStream(), StandardCharsets.UTF_8))) {
                String line = r.readLine();
                return status == 200 ? "ok " + line : "fail status " + status;
            } finally {
                c.disconnect();
            }
        } catch (Exception e) {
            return "fail " + e;
        }
    }

    static void udp(String ip, int port, int count) throws Exception {
        InetSocketAddress to = new InetSocketAddress(InetAddress.getByName(ip), port);
        try (DatagramSocket s = new DatagramSocket()) {
            s.setSoTimeout(TIMEOUT_MS);
            byte[] buf = new byte[2048];
            for (int i = 0; i < count; i++) {
                byte[] q = ("q" + i).getBytes(StandardCharsets.UTF_8);
                try {
                    s.send(new DatagramPacket(q, q.length, to));
                    DatagramPacket reply = new DatagramPacket(buf, buf.length);
                    s.receive(reply);
                    String body = new String(buf, 0, reply.getLength(), StandardCharsets.UTF_8).trim();
                    System.out.println("reply " + body + " from " + reply.getSocketAddress());
                } catch (Exception e) {
                    System.out.println("fail " + e);
                }
            }
        } catch (Exception e) {
            System.out.println("fail " + e);
        }
    }
}
