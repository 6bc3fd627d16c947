/*
 * redis_lock.cpp
 *     Reference point: a Redis lease lock, the way redis-plus-plus and Redlock do it on one
 *     node. One cycle = SET key token NX PX ttl, and, if granted, a compare-and-delete
 *     release in Lua (EVALSHA: if GET key == token then DEL key). redis-benchmark cannot
 *     carry the token from the SET to the release, so this small client does.
 *
 *     redis_lock <port> <clients> <seconds> [keys=100000] [hot=0] [depth=1]
 *
 * One thread and one blocking TCP connection per client (127.0.0.1), a fresh random
 * 16-byte hex token per attempt. depth 1: no pipelining, two round trips per granted
 * cycle, like the PostgreSQL workloads. depth N > 1: each client pipelines N attempts
 * (N SETs in one write, then N replies), then the N releases of the granted ones the
 * same way: the fastest way a Redis client takes locks. Prints the same line as
 * client_bench (cycles = attempts).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "driver.hpp"

namespace {

const char *const kRelease =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

class Conn {
public:
    explicit Conn(int port)
    {
        m_fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(static_cast<uint16_t>(port));
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (m_fd < 0 || ::connect(m_fd, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0)
        {
            std::perror("connect");
            std::exit(1);
        }
        int one = 1;
        ::setsockopt(m_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    ~Conn() { ::close(m_fd); }

    /* Appends one command (RESP array of bulk strings) to out. */
    static void encode(std::string &out, const std::vector<std::string> &args)
    {
        out += "*" + std::to_string(args.size()) + "\r\n";
        for (const auto &s : args)
            out += "$" + std::to_string(s.size()) + "\r\n" + s + "\r\n";
    }

    /* Sends one command, returns the reply's first line (a bulk reply's payload). */
    std::string command(const std::vector<std::string> &args)
    {
        std::string out;
        encode(out, args);
        send(out);
        return reply();
    }

    void send(const std::string &out)
    {
        for (size_t off = 0; off < out.size();)
        {
            ssize_t n = ::write(m_fd, out.data() + off, out.size() - off);
            if (n <= 0)
            {
                std::perror("write");
                std::exit(1);
            }
            off += static_cast<size_t>(n);
        }
    }

    /* The next reply's first line (a bulk reply's payload). */
    std::string reply()
    {
        std::string line = read_line();
        if (!line.empty() && line[0] == '$' && line != "$-1")
        {
            /* bulk reply (SCRIPT LOAD): read the payload line too */
            std::string payload = read_line();
            return payload;
        }
        return line;
    }

private:
    std::string read_line()
    {
        for (;;)
        {
            size_t pos = m_buf.find("\r\n");
            if (pos != std::string::npos)
            {
                std::string line = m_buf.substr(0, pos);
                m_buf.erase(0, pos + 2);
                return line;
            }
            char tmp[4096];
            ssize_t n = ::read(m_fd, tmp, sizeof tmp);
            if (n <= 0)
            {
                std::perror("read");
                std::exit(1);
            }
            m_buf.append(tmp, static_cast<size_t>(n));
        }
    }
    int m_fd = -1;
    std::string m_buf;
};

} // namespace

int
main(int argc, char **argv)
{
    if (argc < 4)
    {
        std::fprintf(stderr, "usage: %s <port> <clients> <seconds> [keys] [hot]\n", argv[0]);
        return 2;
    }
    const int port = std::atoi(argv[1]);
    const int clients = std::atoi(argv[2]);
    const double seconds = std::atof(argv[3]);
    const long keys = argc > 4 ? std::atol(argv[4]) : 100000;
    const bool hot = argc > 5 && std::atoi(argv[5]) != 0;
    const int depth = argc > 6 ? std::max(1, std::atoi(argv[6])) : 1;

    std::string sha;
    {
        Conn c(port);
        sha = c.command({"SCRIPT", "LOAD", kRelease});
        if (sha.size() != 40)
        {
            std::fprintf(stderr, "SCRIPT LOAD failed: %s\n", sha.c_str());
            return 1;
        }
    }

    return bench::run_timed(clients, seconds, [&](int t, bench::Clock::time_point stop) {
        Conn c(port);
        std::mt19937_64 rng(std::random_device{}() ^ (static_cast<uint64_t>(t) << 32));
        std::uniform_int_distribution<long> pick(1, keys);
        bench::Counts n;
        char token[33];
        std::vector<std::string> batch_keys(static_cast<size_t>(depth)), batch_tokens(static_cast<size_t>(depth));
        std::vector<size_t> granted;
        std::string out;
        while (depth > 1 && bench::Clock::now() < stop)
        {
            out.clear();
            for (size_t i = 0; i < batch_keys.size(); ++i)
            {
                batch_keys[i] = hot ? std::string("hot") : "k" + std::to_string(pick(rng));
                std::snprintf(token, sizeof token, "%016llx%016llx",
                              static_cast<unsigned long long>(rng()), static_cast<unsigned long long>(rng()));
                batch_tokens[i] = token;
                Conn::encode(out, {"SET", batch_keys[i], batch_tokens[i], "NX", "PX", "60000"});
            }
            c.send(out);
            granted.clear();
            for (size_t i = 0; i < batch_keys.size(); ++i)
            {
                const std::string r = c.reply();
                ++n.cycles;
                if (r == "+OK")
                    granted.push_back(i);
                else if (r != "$-1" && ++n.errors <= 3)
                    std::fprintf(stderr, "SET: %s\n", r.c_str());
            }
            if (granted.empty())
                continue;
            out.clear();
            for (size_t i : granted)
                Conn::encode(out, {"EVALSHA", sha, "1", batch_keys[i], batch_tokens[i]});
            c.send(out);
            for (size_t i = 0; i < granted.size(); ++i)
            {
                ++n.grants;
                const std::string d = c.reply();
                if (d != ":1" && ++n.errors <= 3)
                    std::fprintf(stderr, "release: %s\n", d.c_str());
            }
        }
        while (depth == 1 && bench::Clock::now() < stop)
        {
            const std::string key = hot ? std::string("hot") : "k" + std::to_string(pick(rng));
            std::snprintf(token, sizeof token, "%016llx%016llx",
                          static_cast<unsigned long long>(rng()), static_cast<unsigned long long>(rng()));
            const std::string r = c.command({"SET", key, token, "NX", "PX", "60000"});
            ++n.cycles;
            if (r == "+OK")
            {
                ++n.grants;
                const std::string d = c.command({"EVALSHA", sha, "1", key, token});
                if (d != ":1" && ++n.errors <= 3)
                    std::fprintf(stderr, "release: %s\n", d.c_str());
            }
            else if (r != "$-1" && ++n.errors <= 3)
                std::fprintf(stderr, "SET: %s\n", r.c_str());
        }
        return n;
    });
}
