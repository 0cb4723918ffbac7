/*
 * worker.c: a persona outbox worker in C on libpq (docs/delivery.md,
 * "The worker protocol"), with examples/worker.py's behaviour.
 *
 * LISTENs on persona_outbox, claims due messages of one channel with
 * persona_claim in its own transaction, hands each to a sender, acks what
 * was sent in one batch and fails what was not with the sender's error.
 * Reconnects with backoff when the server goes away; on SIGTERM or SIGINT
 * it finishes the batch in hand, acks it and exits 0.
 *
 * Built by `make worker` (examples/worker, never installed):
 *
 *     examples/worker --channel push "dbname=shop"
 *     examples/worker --channel push --sender null --batch 1000 --drain
 *     examples/worker --channel email --sender 'command:./send-mail'
 *
 * Senders (--sender):
 *   stdout        (default) prints each message as one JSON line
 *   null          sends nothing and acks every message (benchmarks)
 *   command:CMD   starts `sh -c CMD` once, writes each message to its
 *                 stdin as one JSON line and reads one reply line per
 *                 message: "ok" (sent), "retry TEXT" (failed, tried
 *                 again later) or "dead TEXT" (failed for good), TEXT
 *                 being the error recorded; anything else, or the
 *                 command exiting, stops the worker (exit 1)
 *
 * --exit-when-idle SECONDS exits after that long without a message (as
 * worker.py's); --drain exits at the first empty claim (benchmarks,
 * one-off drains).
 *
 * A batch is fetched as plain text rows (a prepared persona_claim, one
 * round trip); the ack's bigint[] literal is built from the ids' text.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

/* SQLSTATE of persona_ack's "not claimed or already acked" (a late ack) */
#define SQLSTATE_LATE_ACK "55000"

/* Backoff between reconnection attempts: doubled from the first, capped */
#define RECONNECT_FIRST_S 0.5
#define RECONNECT_MAX_S 30.0

/* The columns of persona_claim, in the order of the claim query */
enum
{
	COL_MESSAGE_ID,
	COL_PROFILE_ID,
	COL_USER_ID,
	COL_CHANNEL,
	COL_ACTION,
	COL_CONTENT,
	COL_ATTEMPT,
	COL_SOURCE,
	NUM_COLS
};

#define CLAIM_SQL \
	"SELECT m.message_id, m.profile_id, m.user_id, m.channel, m.action, " \
	"m.content, m.attempt, m.source FROM persona_claim($1, $2, $3::interval) AS m"
#define ACK_SQL "SELECT persona_ack($1::bigint[])"
#define FAIL_SQL "SELECT persona_fail($1::bigint, $2, $3::boolean)"

typedef struct Options
{
	const char *dsn;
	const char *channel;
	int			batch;
	const char *lease;
	double		poll;
	const char *sender;
	double		exit_when_idle;
	bool		drain;			/* exit at the first empty claim */
} Options;

/* A growable string; on allocation failure the worker exits (it holds no
 * state a restart would not recover: unacked claims return after the lease). */
typedef struct Buf
{
	char	   *data;
	size_t		len;
	size_t		cap;
} Buf;

/* What a sender says about one message */
typedef enum SendResult
{
	SEND_OK,
	SEND_RETRY,					/* failed, try again later */
	SEND_DEAD,					/* failed for good */
	SEND_FATAL					/* the sender itself broke: stop the worker */
} SendResult;

/* A pluggable sender: send() gets a claimed row and writes its error text
 * into err on failure; flush() runs before each ack (false: fatal). */
typedef struct Sender
{
	SendResult	(*send) (struct Sender *s, PGresult *res, int row, Buf *err);
	bool		(*flush) (struct Sender *s);
	void		(*close) (struct Sender *s);
	Buf			line;			/* scratch for the JSON line */
	FILE	   *to;				/* command: its stdin */
	FILE	   *from;			/* command: its stdout */
	pid_t		pid;			/* command: its process */
} Sender;

static volatile sig_atomic_t stopping = 0;
static long long sent_total = 0;
static long long failed_total = 0;

static void
Stop(int signo)
{
	stopping = 1;
}

static void
Log(const char *fmt,...) __attribute__((format(printf, 1, 2)));

static void
Log(const char *fmt,...)
{
	va_list		ap;

	fputs("worker: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static double
Now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Sleeps, returning early when a signal arrives (SIGTERM: stop). */
static void
Sleep(double seconds)
{
	struct timespec ts;

	ts.tv_sec = (time_t) seconds;
	ts.tv_nsec = (long) ((seconds - ts.tv_sec) * 1e9);
	nanosleep(&ts, NULL);
}

static void
BufReserve(Buf *b, size_t more)
{
	size_t		cap = b->cap ? b->cap : 256;
	char	   *data;

	if (b->len + more + 1 <= b->cap)
		return;
	while (cap < b->len + more + 1)
		cap *= 2;
	data = realloc(b->data, cap);
	if (data == NULL)
	{
		Log("out of memory");
		exit(1);
	}
	b->data = data;
	b->cap = cap;
}

static inline void
BufAppendN(Buf *b, const char *s, size_t n)
{
	BufReserve(b, n);
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
}

static inline void
BufAppend(Buf *b, const char *s)
{
	BufAppendN(b, s, strlen(s));
}

static inline void
BufReset(Buf *b)
{
	b->len = 0;
	if (b->data)
		b->data[0] = '\0';
}

static void
BufFree(Buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

/* Appends s as a JSON string (quotes, escapes). */
static void
BufAppendJsonString(Buf *b, const char *s)
{
	BufAppendN(b, "\"", 1);
	for (const char *p = s; *p; p++)
	{
		unsigned char c = (unsigned char) *p;
		char		esc[8];

		if (c == '"' || c == '\\')
		{
			esc[0] = '\\';
			esc[1] = (char) c;
			BufAppendN(b, esc, 2);
		}
		else if (c < 0x20)
		{
			snprintf(esc, sizeof(esc), "\\u%04x", c);
			BufAppendN(b, esc, 6);
		}
		else
			BufAppendN(b, p, 1);
	}
	BufAppendN(b, "\"", 1);
}

/*
 * The message of a claimed row as one JSON line, keys sorted as
 * worker.py's json.dumps(sort_keys=True) prints them; content is jsonb's
 * own text (valid JSON), numbers as they come.
 */
static void
MessageJson(PGresult *res, int row, Buf *out)
{
	static const struct
	{
		const char *key;
		int			col;
		bool		raw;		/* JSON as is: a number or jsonb */
	}			fields[] = {
		{"action", COL_ACTION, false},
		{"attempt", COL_ATTEMPT, true},
		{"channel", COL_CHANNEL, false},
		{"content", COL_CONTENT, true},
		{"message_id", COL_MESSAGE_ID, true},
		{"profile_id", COL_PROFILE_ID, true},
		{"source", COL_SOURCE, false},
		{"user_id", COL_USER_ID, false},
	};

	BufReset(out);
	BufAppendN(out, "{", 1);
	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
	{
		if (i > 0)
			BufAppendN(out, ", ", 2);
		BufAppendJsonString(out, fields[i].key);
		BufAppendN(out, ": ", 2);
		if (PQgetisnull(res, row, fields[i].col))
			BufAppend(out, "null");
		else if (fields[i].raw)
			BufAppend(out, PQgetvalue(res, row, fields[i].col));
		else
			BufAppendJsonString(out, PQgetvalue(res, row, fields[i].col));
	}
	BufAppendN(out, "}\n", 2);
}

/* ---- the stdout sender: a JSON line per message ---- */

static SendResult
StdoutSend(Sender *s, PGresult *res, int row, Buf *err)
{
	MessageJson(res, row, &s->line);
	if (fwrite(s->line.data, 1, s->line.len, stdout) != s->line.len)
	{
		BufAppend(err, "stdout: ");
		BufAppend(err, strerror(errno));
		return SEND_FATAL;
	}
	return SEND_OK;
}

/* What was written reaches stdout before the batch is acked. */
static bool
StdoutFlush(Sender *s)
{
	if (fflush(stdout) != 0)
	{
		Log("stdout: %s", strerror(errno));
		return false;
	}
	return true;
}

/* ---- the null sender: sends nothing (benchmarks) ---- */

static SendResult
NullSend(Sender *s, PGresult *res, int row, Buf *err)
{
	/* What any sender reads: a rendered content. */
	const char *content = PQgetvalue(res, row, COL_CONTENT);

	if (content[0] != '{')
	{
		BufAppend(err, "null sender: content is not a JSON object");
		return SEND_DEAD;
	}
	return SEND_OK;
}

static bool
NullFlush(Sender *s)
{
	return true;
}

/* ---- the command sender: JSON lines to a command, a reply line each ---- */

static SendResult
CommandSend(Sender *s, PGresult *res, int row, Buf *err)
{
	char		reply[2048];
	size_t		n;

	MessageJson(res, row, &s->line);
	if (fwrite(s->line.data, 1, s->line.len, s->to) != s->line.len || fflush(s->to) != 0)
	{
		BufAppend(err, "sender command: cannot write: ");
		BufAppend(err, strerror(errno));
		return SEND_FATAL;
	}
	if (fgets(reply, sizeof(reply), s->from) == NULL)
	{
		BufAppend(err, "sender command: no reply (did it exit?)");
		return SEND_FATAL;
	}
	n = strlen(reply);
	if (n > 0 && reply[n - 1] == '\n')
		reply[--n] = '\0';
	if (strcmp(reply, "ok") == 0)
		return SEND_OK;
	if (strncmp(reply, "retry ", 6) == 0)
	{
		BufAppend(err, reply + 6);
		return SEND_RETRY;
	}
	if (strncmp(reply, "dead ", 5) == 0)
	{
		BufAppend(err, reply + 5);
		return SEND_DEAD;
	}
	BufAppend(err, "sender command: unexpected reply: ");
	BufAppend(err, reply);
	return SEND_FATAL;
}

static void
CommandClose(Sender *s)
{
	int			status;

	if (s->to)
		fclose(s->to);			/* EOF on its stdin: it should exit */
	if (s->from)
		fclose(s->from);
	s->to = s->from = NULL;
	if (s->pid > 0 && waitpid(s->pid, &status, 0) == s->pid &&
		!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
		Log("sender command exited with status %d", status);
	s->pid = 0;
}

/* Starts `sh -c command` with pipes to its stdin and from its stdout. */
static bool
CommandOpen(Sender *s, const char *command)
{
	int			in[2],
				out[2];

	if (pipe(in) != 0)
	{
		Log("pipe: %s", strerror(errno));
		return false;
	}
	if (pipe(out) != 0)
	{
		Log("pipe: %s", strerror(errno));
		close(in[0]);
		close(in[1]);
		return false;
	}
	s->pid = fork();
	if (s->pid < 0)
	{
		Log("fork: %s", strerror(errno));
		close(in[0]);
		close(in[1]);
		close(out[0]);
		close(out[1]);
		return false;
	}
	if (s->pid == 0)
	{
		dup2(in[0], STDIN_FILENO);
		dup2(out[1], STDOUT_FILENO);
		close(in[0]);
		close(in[1]);
		close(out[0]);
		close(out[1]);
		signal(SIGPIPE, SIG_DFL);
		execl("/bin/sh", "sh", "-c", command, (char *) NULL);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	s->to = fdopen(in[1], "w");
	s->from = fdopen(out[0], "r");
	if (s->to == NULL || s->from == NULL)
	{
		Log("fdopen: %s", strerror(errno));
		if (s->to == NULL)
			close(in[1]);
		if (s->from == NULL)
			close(out[0]);
		CommandClose(s);
		return false;
	}
	return true;
}

static void
SenderClose(Sender *s)
{
	if (s->close)
		s->close(s);
	BufFree(&s->line);
}

/* The sender named by --sender, or false with a message. */
static bool
SenderOpen(Sender *s, const char *spec)
{
	memset(s, 0, sizeof(*s));
	if (spec == NULL || strcmp(spec, "stdout") == 0)
	{
		s->send = StdoutSend;
		s->flush = StdoutFlush;
		return true;
	}
	if (strcmp(spec, "null") == 0)
	{
		s->send = NullSend;
		s->flush = NullFlush;
		return true;
	}
	if (strncmp(spec, "command:", 8) == 0 && spec[8] != '\0')
	{
		s->send = CommandSend;
		s->flush = NullFlush;
		s->close = CommandClose;
		return CommandOpen(s, spec + 8);
	}
	Log("unknown sender \"%s\" (stdout, null or command:CMD)", spec);
	return false;
}

/* ---- the database side ---- */

/* Whether the connection is gone (then the caller reconnects). */
static inline bool
ConnectionLost(PGconn *conn)
{
	return PQstatus(conn) == CONNECTION_BAD;
}

/* Logs a failed result's error. */
static void
LogResultError(const char *what, PGconn *conn, PGresult *res)
{
	const char *msg = res ? PQresultErrorMessage(res) : PQerrorMessage(conn);
	size_t		n = strlen(msg);

	while (n > 0 && msg[n - 1] == '\n')
		n--;
	Log("%s: %.*s", what, (int) n, msg);
}

/* The result's SQLSTATE, or "" */
static const char *
ResultState(PGresult *res)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

	return state ? state : "";
}

/* Runs a prepared statement with text parameters. */
static PGresult *
Exec(PGconn *conn, const char *stmt, int nparams, const char *const *values)
{
	return PQexecPrepared(conn, stmt, nparams, values, NULL, NULL, 0);
}

typedef enum Outcome
{
	OUTCOME_OK,
	OUTCOME_LOST,				/* connection lost: reconnect */
	OUTCOME_ERROR				/* anything else: stop (exit 1) */
} Outcome;

static Outcome
CheckCommand(const char *what, PGconn *conn, PGresult *res, ExecStatusType want)
{
	if (res && PQresultStatus(res) == want)
		return OUTCOME_OK;
	if (ConnectionLost(conn))
		return OUTCOME_LOST;
	LogResultError(what, conn, res);
	return OUTCOME_ERROR;
}

/* Acks a bigint[] literal of ids in one call; a late ack (55000) of some
 * of them makes it ack them one by one, skipping those refused. */
static Outcome
Ack(PGconn *conn, Buf *ids, int count)
{
	const char *params[1] = {ids->data};
	PGresult   *res = Exec(conn, "ack", 1, params);
	Outcome		out;
	Buf			one = {0};

	if (res && PQresultStatus(res) == PGRES_TUPLES_OK)
	{
		PQclear(res);
		sent_total += count;
		return OUTCOME_OK;
	}
	if (strcmp(ResultState(res), SQLSTATE_LATE_ACK) != 0)
	{
		out = CheckCommand("ack", conn, res, PGRES_TUPLES_OK);
		PQclear(res);
		return out;
	}
	PQclear(res);

	/* One by one: ids->data is "{1,2,3}" */
	out = OUTCOME_OK;
	for (char *p = ids->data + 1; *p && *p != '}' && out == OUTCOME_OK;)
	{
		size_t		n = strcspn(p, ",}");

		BufReset(&one);
		BufAppendN(&one, "{", 1);
		BufAppendN(&one, p, n);
		BufAppendN(&one, "}", 1);
		params[0] = one.data;
		res = Exec(conn, "ack", 1, params);
		if (res && PQresultStatus(res) == PGRES_TUPLES_OK)
			sent_total++;
		else if (strcmp(ResultState(res), SQLSTATE_LATE_ACK) == 0)
			Log("message %.*s not acked: %s", (int) n, p,
				PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
		else
			out = CheckCommand("ack", conn, res, PGRES_TUPLES_OK);
		PQclear(res);
		p += n;
		if (*p == ',')
			p++;
	}
	BufFree(&one);
	return out;
}

/* Records a sender's error on a message. */
static Outcome
Fail(PGconn *conn, const char *message_id, const char *error, bool retry)
{
	const char *params[3] = {message_id, error, retry ? "true" : "false"};
	PGresult   *res = Exec(conn, "fail", 3, params);
	Outcome		out = CheckCommand("fail", conn, res, PGRES_TUPLES_OK);

	PQclear(res);
	if (out == OUTCOME_OK)
		failed_total++;
	return out;
}

/*
 * Claims, sends and acks one batch; *claimed is how many were claimed.
 * Every message of the batch is handed to the sender even when SIGTERM
 * arrives meanwhile, and what was sent is acked.
 */
static Outcome
RunBatch(PGconn *conn, const Options *opt, Sender *sender, int *claimed)
{
	char		batch[16];
	const char *params[3] = {opt->channel, batch, opt->lease};
	PGresult   *res;
	Outcome		out = OUTCOME_OK;
	Buf			ids = {0};
	Buf			err = {0};
	int			nsent = 0;
	int			rows;

	snprintf(batch, sizeof(batch), "%d", opt->batch);
	res = Exec(conn, "claim", 3, params);
	*claimed = 0;
	if ((out = CheckCommand("claim", conn, res, PGRES_TUPLES_OK)) != OUTCOME_OK)
	{
		PQclear(res);
		return out;
	}
	if (PQnfields(res) != NUM_COLS)
	{
		Log("claim: %d columns, expected %d", PQnfields(res), NUM_COLS);
		PQclear(res);
		return OUTCOME_ERROR;
	}
	rows = PQntuples(res);
	*claimed = rows;
	BufAppendN(&ids, "{", 1);
	for (int row = 0; row < rows && out == OUTCOME_OK; row++)
	{
		const char *id = PQgetvalue(res, row, COL_MESSAGE_ID);
		SendResult	r;

		BufReset(&err);
		r = sender->send(sender, res, row, &err);
		if (r == SEND_OK)
		{
			if (nsent++ > 0)
				BufAppendN(&ids, ",", 1);
			BufAppend(&ids, id);
		}
		else if (r == SEND_FATAL)
		{
			/* Acks what was sent; the rest returns after the lease. */
			Log("message %s: %s", id, err.data);
			out = OUTCOME_ERROR;
		}
		else
			out = Fail(conn, id, err.data, r == SEND_RETRY);
	}
	BufAppendN(&ids, "}", 1);
	if (nsent > 0)
	{
		if (!sender->flush(sender))
			out = OUTCOME_ERROR;	/* not sent: returns after the lease */
		else
		{
			Outcome		acked = Ack(conn, &ids, nsent);

			if (out == OUTCOME_OK)
				out = acked;
		}
	}
	BufFree(&ids);
	BufFree(&err);
	PQclear(res);
	return out;
}

/* Prepares the worker's statements and LISTENs. */
static Outcome
Prepare(PGconn *conn)
{
	static const struct
	{
		const char *name;
		const char *sql;
		int			nparams;
	}			stmts[] = {
		{"claim", CLAIM_SQL, 3},
		{"ack", ACK_SQL, 1},
		{"fail", FAIL_SQL, 3},
	};
	PGresult   *res;
	Outcome		out;

	for (size_t i = 0; i < sizeof(stmts) / sizeof(stmts[0]); i++)
	{
		res = PQprepare(conn, stmts[i].name, stmts[i].sql, stmts[i].nparams, NULL);
		out = CheckCommand("prepare", conn, res, PGRES_COMMAND_OK);
		PQclear(res);
		if (out != OUTCOME_OK)
			return out;
	}
	res = PQexec(conn, "LISTEN persona_outbox");
	out = CheckCommand("listen", conn, res, PGRES_COMMAND_OK);
	PQclear(res);
	return out;
}

/* Waits for a notification or poll seconds; drops the notifications. */
static Outcome
WaitForWork(PGconn *conn, double poll)
{
	int			sock = PQsocket(conn);
	fd_set		readable;
	struct timeval tv;
	PGnotify   *note;

	if (sock < 0)
		return OUTCOME_LOST;
	FD_ZERO(&readable);
	FD_SET(sock, &readable);
	tv.tv_sec = (time_t) poll;
	tv.tv_usec = (suseconds_t) ((poll - tv.tv_sec) * 1e6);
	if (select(sock + 1, &readable, NULL, NULL, &tv) < 0 && errno != EINTR)
	{
		Log("select: %s", strerror(errno));
		return OUTCOME_ERROR;
	}
	if (!PQconsumeInput(conn))
		return ConnectionLost(conn) ? OUTCOME_LOST : OUTCOME_ERROR;
	while ((note = PQnotifies(conn)) != NULL)
		PQfreemem(note);
	return OUTCOME_OK;
}

/* One connection's life: until stopped, idle long enough, or lost. */
static Outcome
Serve(PGconn *conn, const Options *opt, Sender *sender, double *backoff)
{
	Outcome		out = Prepare(conn);
	double		idle_since = Now();

	if (out != OUTCOME_OK)
		return out;
	Log("listening for %s", opt->channel);
	*backoff = RECONNECT_FIRST_S;
	while (!stopping)
	{
		int			claimed;

		out = RunBatch(conn, opt, sender, &claimed);
		if (out != OUTCOME_OK)
			return out;
		if (claimed > 0)
		{
			idle_since = Now();
			continue;
		}
		if (opt->drain ||
			(opt->exit_when_idle > 0 && Now() - idle_since >= opt->exit_when_idle))
		{
			Log("idle, exiting");
			break;
		}
		out = WaitForWork(conn, opt->poll);
		if (out != OUTCOME_OK)
			return out;
	}
	return OUTCOME_OK;
}

static void
Usage(FILE *to)
{
	fputs("usage: worker --channel CHANNEL [--batch N] [--lease INTERVAL] [--poll SECONDS]\n"
		  "              [--sender stdout|null|command:CMD] [--exit-when-idle SECONDS] [--drain]\n"
		  "              [DSN]\n"
		  "A persona outbox worker: claims, sends and acks the messages of one channel.\n"
		  "DSN is a libpq connection string (default: the PG* environment variables).\n",
		  to);
}

/* A number option, or exit 2 */
static double
NumberArg(const char *name, const char *text, double min, double max)
{
	char	   *end;
	double		v;

	errno = 0;
	v = strtod(text, &end);
	if (errno != 0 || end == text || *end != '\0' || v < min || v > max)
	{
		Log("--%s must be a number from %g to %g, not \"%s\"", name, min, max, text);
		exit(2);
	}
	return v;
}

static void
ParseOptions(int argc, char **argv, Options *opt)
{
	static const struct option longopts[] = {
		{"channel", required_argument, NULL, 'c'},
		{"batch", required_argument, NULL, 'b'},
		{"lease", required_argument, NULL, 'l'},
		{"poll", required_argument, NULL, 'p'},
		{"sender", required_argument, NULL, 's'},
		{"exit-when-idle", required_argument, NULL, 'x'},
		{"drain", no_argument, NULL, 'd'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	int			c;

	memset(opt, 0, sizeof(*opt));
	opt->dsn = "";
	opt->batch = 100;
	opt->lease = "30 seconds";
	opt->poll = 1.0;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1)
	{
		switch (c)
		{
			case 'c':
				opt->channel = optarg;
				break;
			case 'b':
				opt->batch = (int) NumberArg("batch", optarg, 1, 10000);
				break;
			case 'l':
				opt->lease = optarg;
				break;
			case 'p':
				opt->poll = NumberArg("poll", optarg, 0.001, 3600);
				break;
			case 's':
				opt->sender = optarg;
				break;
			case 'x':
				opt->exit_when_idle = NumberArg("exit-when-idle", optarg, 0, 86400);
				break;
			case 'd':
				opt->drain = true;
				break;
			case 'h':
				Usage(stdout);
				exit(0);
			default:
				Usage(stderr);
				exit(2);
		}
	}
	if (optind < argc)
		opt->dsn = argv[optind++];
	if (optind < argc || opt->channel == NULL)
	{
		Usage(stderr);
		exit(2);
	}
}

int
main(int argc, char **argv)
{
	Options		opt;
	Sender		sender;
	struct sigaction sa;
	double		backoff = RECONNECT_FIRST_S;
	int			rc = 0;
	struct rusage ru;

	ParseOptions(argc, argv, &opt);

	/* No SA_RESTART: a signal ends a wait or a sleep at once. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = Stop;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);	/* a dead sender command: EPIPE, not death */

	if (!SenderOpen(&sender, opt.sender))
		return 2;

	while (!stopping)
	{
		PGconn	   *conn = PQconnectdb(opt.dsn);
		Outcome		out;

		if (conn == NULL)
		{
			Log("out of memory");
			rc = 1;
			break;
		}
		if (PQstatus(conn) == CONNECTION_OK)
			out = Serve(conn, &opt, &sender, &backoff);
		else
		{
			LogResultError("connect", conn, NULL);
			out = OUTCOME_LOST;
		}
		if (out == OUTCOME_LOST && PQstatus(conn) == CONNECTION_OK)
			out = OUTCOME_ERROR;	/* can't happen: lost means bad */
		if (out == OUTCOME_LOST)
			LogResultError("connection lost", conn, NULL);
		PQfinish(conn);
		if (out == OUTCOME_OK)
			break;
		if (out == OUTCOME_ERROR)
		{
			rc = 1;
			break;
		}
		/* What was claimed and not acked returns when its lease expires. */
		Log("reconnecting in %.1f s", backoff);
		Sleep(backoff);
		backoff = backoff * 2 > RECONNECT_MAX_S ? RECONNECT_MAX_S : backoff * 2;
	}
	SenderClose(&sender);
	getrusage(RUSAGE_SELF, &ru);
	Log("stopped: %lld sent, %lld failed, %.3f s CPU", sent_total, failed_total,
		ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
		(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
	return rc;
}
