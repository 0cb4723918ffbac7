/*
 * sendtime.c
 *	  Best send time and best channel of a person (docs/sendtime.md).
 *
 * Nothing is kept per person: both answers are computed when asked, from
 * rows persona already stores and indexes by profile_id, so that ingest and
 * message feedback pay nothing for them:
 *	- engagement moments: the person's events (persona.events, primary key
 *	  (profile_id, occurred_at, ...), read backwards, at most
 *	  SENDTIME_MAX_MOMENTS) and clicks and conversions on their messages
 *	  (persona.message_feedback, primary key (profile_id, ...)), within the
 *	  last SENDTIME_WINDOW_DAYS days;
 *	- per channel, the person's delivered messages (claimed or sent) and how
 *	  many of them were clicked or converted (persona.messages by
 *	  messages_profile_idx, feedback by its primary key), and their campaign
 *	  messages held in chunks that were claimed or sent (campaigns.c: one
 *	  index probe per campaign of the window);
 *	- the channel most of their events of the window came through (the
 *	  events' context channel), when the population has more than one.
 * The population's figures (the priors and the fallback) are the same
 * computation over a sample of at most SENDTIME_SAMPLE profiles, cached per
 * backend for SENDTIME_POPULATION_TTL (persona.refresh_engagement() drops
 * the cache).
 *
 * Best time: counts per local hour of the week (Monday 00:00 = 0), each
 * hour scored with half of each neighbour's count and SENDTIME_PRIOR
 * engagements spread by the population's shares; below SENDTIME_MIN_MOMENTS
 * engagements, the population's best hour.  The answer is the start of the
 * next occurrence of that hour after ``after`` (``after`` itself when it
 * falls in it); ties go to the sooner hour.
 *
 * Best channel: per candidate channel, the posterior mean click rate given
 * the person's delivered and engaged messages, under an empirical-Bayes
 * prior: a mix of SENDTIME_GRID rates whose weights are fitted (EM, maximum
 * likelihood) to the sampled people's messages on the channel, per group of
 * people whose activity came mostly through one channel, each group's fit
 * pulled toward the channel's and the channel's toward a base prior of
 * SENDTIME_BASE_STRENGTH messages at the overall rate.  Ties go to the
 * earlier candidate.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgtime.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "lib/stringinfo.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "campaigns.h"
#include "outbox.h"
#include "persona.h"
#include "sendtime.h"
#include "validate.h"

#define HOURS_PER_WEEK			168
#define SENDTIME_WINDOW_DAYS	180 /* history read, as CleverTap's Best Time */
#define SENDTIME_MAX_MOMENTS	1000	/* most recent events read per person */
#define SENDTIME_MIN_MOMENTS	5	/* fewer: the population's best hour */
#define SENDTIME_PRIOR			1.0 /* population pseudo-engagements */
#define SENDTIME_CHANNEL_WEIGHT 3.0 /* a click on the asked channel */
#define SENDTIME_GRID			64	/* click rates a prior is a mix of */
#define SENDTIME_BASE_STRENGTH	5.0 /* the prior with no data: messages' worth */
#define SENDTIME_POOLED_PEOPLE	20.0	/* weight of the wider prior in a fit */
#define SENDTIME_EM_ROUNDS		50	/* of a prior's fit */
#define SENDTIME_MAX_GROUPS		16	/* activity channels told apart */
#define SENDTIME_SAMPLE			2000	/* profiles sampled for the population */
#define SENDTIME_POPULATION_TTL (10 * 60 * USECS_PER_SEC)
#define SENDTIME_DEFAULT_HOUR	18	/* local hour with no data at all */
#define SENDTIME_MAX_CHANNELS	64

/* One channel's messages: delivered, and engaged (clicked or converted). */
typedef struct ChannelCount
{
	char		name[NAMEDATALEN];
	double		delivered;
	double		engaged;
} ChannelCount;

/*
 * The people of the sample whose events came mostly through one channel
 * (the events' context channel; "" for none).
 */
typedef struct ActivityGroup
{
	char		name[NAMEDATALEN];
	int			people;
} ActivityGroup;

/* The population's figures, cached per backend. */
typedef struct Population
{
	bool		valid;
	Oid			profiles;		/* persona.profiles when computed */
	TimestampTz computed_at;
	int			people;			/* sampled profiles */
	int			engaged_people; /* of them, with enough history */
	double		share[HOURS_PER_WEEK];	/* mean share per local hour */
	int			nchannels;
	ChannelCount channels[SENDTIME_MAX_CHANNELS];
	int			fitted[SENDTIME_MAX_CHANNELS];	/* people it was fitted on */
	int			ngroups;
	ActivityGroup groups[SENDTIME_MAX_GROUPS];
	double		overall;		/* engaged / delivered, all channels */
	double		base[SENDTIME_GRID];	/* the prior of a channel with no data */
	/* the fitted priors: (1 + ngroups) x nchannels x SENDTIME_GRID weights */
	double	   *weights;
} Population;

/* One sampled person's messages on one channel, to fit the priors. */
typedef struct ChannelObservation
{
	int			group;
	char		name[NAMEDATALEN];
	double		delivered;
	double		engaged;
} ChannelObservation;

static Population population;

static SPIPlanPtr profile_plan = NULL;
static SPIPlanPtr moments_plan = NULL;
static SPIPlanPtr channels_plan = NULL;
static SPIPlanPtr sample_plan = NULL;
static SPIPlanPtr action_channels_plan = NULL;
static SPIPlanPtr activity_plan = NULL;

/* The zone of a declared timezone trait, UTC when absent or unknown. */
static pg_tz *
PersonZone(const char *name)
{
	pg_tz	   *tz = NULL;

	if (name != NULL && strlen(name) < TZ_STRLEN_MAX)
		tz = pg_tzset(name);
	if (tz == NULL)
		tz = pg_tzset("UTC");
	if (tz == NULL)
		elog(ERROR, "time zone UTC is not known");
	return tz;
}

/* The hour of the week of local fields (Monday 00:00-00:59 = 0). */
static inline int
LocalHourOfWeek(const struct pg_tm *tm)
{
	/* timestamp2tm leaves tm_wday unset; j2day: 0 = Sunday */
	return ((j2day(date2j(tm->tm_year, tm->tm_mon, tm->tm_mday)) + 6) % 7) * 24 + tm->tm_hour;
}

/* The local hour of the week of t. */
static inline int
HourOfWeek(TimestampTz t, pg_tz *tz)
{
	struct pg_tm tm;
	fsec_t		fsec;
	int			tzoff;

	if (timestamp2tm(t, &tzoff, &tm, &fsec, NULL, tz) != 0)
		return -1;
	return LocalHourOfWeek(&tm);
}

/*
 * The first moment at or after ``after`` in local hour of the week ``how``:
 * ``after`` when it is in that hour, else the start of the hour's next
 * occurrence.  A local hour that a daylight-saving change skips starts at
 * the instant PostgreSQL gives that local time.
 */
static TimestampTz
NextInHour(TimestampTz after, int how, pg_tz *tz)
{
	struct pg_tm tm;
	fsec_t		fsec;
	int			tzoff;
	int			now_how;
	Timestamp	local;
	TimestampTz result;

	if (timestamp2tm(after, &tzoff, &tm, &fsec, NULL, tz) != 0)
		return after;			/* out of range: nothing sooner to offer */
	now_how = LocalHourOfWeek(&tm);
	if (now_how == how)
		return after;
	tm.tm_min = 0;
	tm.tm_sec = 0;
	if (tm2timestamp(&tm, 0, NULL, &local) != 0)
		return after;
	local += (int64) ((how - now_how + HOURS_PER_WEEK) % HOURS_PER_WEEK) * USECS_PER_HOUR;
	if (timestamp2tm(local, NULL, &tm, &fsec, NULL, NULL) != 0)
		return after;
	tzoff = DetermineTimeZoneOffset(&tm, tz);
	if (tm2timestamp(&tm, fsec, &tzoff, &result) != 0 || result < after)
		return after;
	return result;
}

/* The start of the window of history read: SENDTIME_WINDOW_DAYS ago. */
static TimestampTz
WindowStart(void)
{
	return GetCurrentTransactionStartTimestamp() - (int64) SENDTIME_WINDOW_DAYS * USECS_PER_DAY;
}

/* Reads the timezone trait and consent of a profile; false if none. */
static bool
ReadProfile(int64 profile_id, char **zone, Jsonb **consent)
{
	Oid			type = INT8OID;
	Datum		arg = Int64GetDatum(profile_id);
	bool		isnull;
	Datum		v;
	SPIPlanPtr	plan = PersonaKeptPlan(&profile_plan,
									   "SELECT p.traits OPERATOR(pg_catalog.->>) 'timezone', p.consent "
									   "FROM persona.profiles AS p "
									   "WHERE p.profile_id OPERATOR(pg_catalog.=) $1",
									   1, &type, 0);

	*zone = NULL;
	if (consent)
		*consent = NULL;
	if (SPI_execute_plan(plan, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading the profile failed");
	if (SPI_processed == 0)
		return false;
	v = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		*zone = TextDatumGetCString(v);
	if (consent)
	{
		v = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		if (!isnull)
			*consent = DatumGetJsonbP(v);
	}
	return true;
}

/*
 * Adds a person's engagement moments within the window to counts, by local
 * hour of the week: events weigh 1, clicks and conversions on messages 1,
 * or SENDTIME_CHANNEL_WEIGHT on messages of ``channel``.  Returns the total
 * weight.
 */
static double
CountMoments(int64 profile_id, const char *channel, pg_tz *tz, double *counts)
{
	Oid			types[3] = {INT8OID, TIMESTAMPTZOID, TEXTOID};
	Datum		args[3];
	char		nulls[3] = {' ', ' ', channel ? ' ' : 'n'};
	double		total = 0;
	SPIPlanPtr	plan = PersonaKeptPlan(&moments_plan,
									   "(SELECT e.occurred_at, 1::pg_catalog.float8 FROM persona.events AS e "
									   "  WHERE e.profile_id OPERATOR(pg_catalog.=) $1 "
									   "    AND e.occurred_at OPERATOR(pg_catalog.>) $2 "
									   "  ORDER BY e.occurred_at DESC LIMIT " CppAsString2(SENDTIME_MAX_MOMENTS) ") "
									   "UNION ALL "
									   "(SELECT f.at, CASE WHEN m.channel OPERATOR(pg_catalog.=) $3 "
									   "                   THEN " CppAsString2(SENDTIME_CHANNEL_WEIGHT) " ELSE 1 END "
									   "   FROM persona.message_feedback AS f "
									   "   JOIN persona.messages AS m "
									   "     ON m.message_id OPERATOR(pg_catalog.=) f.message_id "
									   "    AND m.profile_id OPERATOR(pg_catalog.=) f.profile_id "
									   "  WHERE f.profile_id OPERATOR(pg_catalog.=) $1 "
									   "    AND f.outcome OPERATOR(pg_catalog.=) ANY ('{click,conversion}'::pg_catalog.text[]) "
									   "    AND f.at OPERATOR(pg_catalog.>) $2 "
									   "  ORDER BY f.at DESC LIMIT " CppAsString2(SENDTIME_MAX_MOMENTS) ")",
									   3, types, 0);

	args[0] = Int64GetDatum(profile_id);
	args[1] = TimestampTzGetDatum(WindowStart());
	args[2] = channel ? CStringGetTextDatum(channel) : (Datum) 0;
	if (SPI_execute_plan(plan, args, nulls, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading engagement failed");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		TimestampTz at;
		double		w;
		int			how;

		CHECK_FOR_INTERRUPTS();
		at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		w = DatumGetFloat8(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
		how = HourOfWeek(at, tz);
		if (how < 0)
			continue;
		counts[how] += w;
		total += w;
	}
	SPI_freetuptable(SPI_tuptable);
	return total;
}

/* Finds name in counts, adding it when there is room; NULL when full. */
static ChannelCount *
FindChannel(ChannelCount *counts, int *n, const char *name)
{
	for (int i = 0; i < *n; i++)
		if (strcmp(counts[i].name, name) == 0)
			return &counts[i];
	if (*n >= SENDTIME_MAX_CHANNELS)
		return NULL;
	strlcpy(counts[*n].name, name, NAMEDATALEN);
	counts[*n].delivered = 0;
	counts[*n].engaged = 0;
	return &counts[(*n)++];
}

/* Where a campaign delivery is counted (PersonaCampaignDeliveries). */
typedef struct ChannelSink
{
	ChannelCount *counts;
	int		   *n;
} ChannelSink;

static void
AddCampaignDelivery(void *arg, const char *channel)
{
	ChannelSink *sink = (ChannelSink *) arg;
	ChannelCount *c = FindChannel(sink->counts, sink->n, channel);

	if (c != NULL)
		c->delivered += 1;
}

/*
 * Adds a person's delivered and engaged messages per channel to counts: the
 * rows of persona.messages claimed or sent, and the campaign messages held
 * in chunks that were claimed or sent (campaigns.c; one with feedback has a
 * row, so those held in chunks are all unengaged).
 */
static void
CountChannels(int64 profile_id, ChannelCount *counts, int *n)
{
	Oid			types[2] = {INT8OID, TIMESTAMPTZOID};
	Datum		args[2];
	ChannelSink sink = {counts, n};
	SPIPlanPtr	plan = PersonaKeptPlan(&channels_plan,
									   "SELECT m.channel, pg_catalog.count(*)::pg_catalog.float8, "
									   "       pg_catalog.count(*) FILTER (WHERE EXISTS ("
									   "         SELECT FROM persona.message_feedback AS f "
									   "          WHERE f.profile_id OPERATOR(pg_catalog.=) m.profile_id "
									   "            AND f.message_id OPERATOR(pg_catalog.=) m.message_id "
									   "            AND f.outcome OPERATOR(pg_catalog.=) ANY ('{click,conversion}'::pg_catalog.text[])"
									   "       ))::pg_catalog.float8 "
									   "  FROM persona.messages AS m "
									   " WHERE m.profile_id OPERATOR(pg_catalog.=) $1 "
									   "   AND m.due_at OPERATOR(pg_catalog.>) $2 "
									   "   AND m.status OPERATOR(pg_catalog.=) ANY ('{claimed,sent}'::pg_catalog.text[]) "
									   " GROUP BY m.channel",
									   2, types, 0);

	args[0] = Int64GetDatum(profile_id);
	args[1] = TimestampTzGetDatum(WindowStart());
	if (SPI_execute_plan(plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading message engagement failed");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		char	   *name = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		ChannelCount *c = FindChannel(counts, n, name);

		CHECK_FOR_INTERRUPTS();
		if (c == NULL)
			continue;
		c->delivered += DatumGetFloat8(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
		c->engaged += DatumGetFloat8(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
	PersonaCampaignDeliveries(profile_id, DatumGetTimestampTz(args[1]), NULL,
							  AddCampaignDelivery, &sink);
}

/*
 * The channel most of a person's events of the window came through (the
 * events' context channel, of the SENDTIME_MAX_MOMENTS most recent; ties
 * to the first name), "" when none has one, into name.
 */
static void
ActivityChannel(int64 profile_id, char *name)
{
	Oid			types[2] = {INT8OID, TIMESTAMPTZOID};
	Datum		args[2];
	SPIPlanPtr	plan = PersonaKeptPlan(&activity_plan,
									   "SELECT x.ch FROM ("
									   "  SELECT e.context OPERATOR(pg_catalog.->>) 'channel' AS ch "
									   "    FROM persona.events AS e "
									   "   WHERE e.profile_id OPERATOR(pg_catalog.=) $1 "
									   "     AND e.occurred_at OPERATOR(pg_catalog.>) $2 "
									   "   ORDER BY e.occurred_at DESC LIMIT " CppAsString2(SENDTIME_MAX_MOMENTS) ") AS x "
									   "WHERE x.ch IS NOT NULL "
									   "GROUP BY x.ch ORDER BY pg_catalog.count(*) DESC, x.ch COLLATE \"C\" LIMIT 1",
									   2, types, 0);

	args[0] = Int64GetDatum(profile_id);
	args[1] = TimestampTzGetDatum(WindowStart());
	if (SPI_execute_plan(plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading activity failed");
	name[0] = '\0';
	if (SPI_processed == 1)
		strlcpy(name, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), NAMEDATALEN);
	SPI_freetuptable(SPI_tuptable);
}

/* The index of an activity group, added when add and there is room; -1. */
static int
FindGroup(Population *pop, const char *name, bool add)
{
	for (int g = 0; g < pop->ngroups; g++)
		if (strcmp(pop->groups[g].name, name) == 0)
			return g;
	if (!add || pop->ngroups >= SENDTIME_MAX_GROUPS)
		return -1;
	strlcpy(pop->groups[pop->ngroups].name, name, NAMEDATALEN);
	return pop->ngroups++;
}

/* Rate j of the grid the priors are mixes of. */
static inline double
GridRate(int j)
{
	return (j + 0.5) / SENDTIME_GRID;
}

/* The prior of an activity group (-1: everyone) for channel i. */
static inline double *
Weights(const Population *pop, int group, int i)
{
	return pop->weights + ((size_t) (group + 1) * pop->nchannels + i) * SENDTIME_GRID;
}

/*
 * The likelihood of ``engaged`` clicks of ``delivered`` messages at each
 * rate of the grid, scaled so that the largest is 1.
 */
static void
GridLikelihood(double engaged, double delivered, double *like)
{
	double		top = -INFINITY;

	for (int j = 0; j < SENDTIME_GRID; j++)
	{
		like[j] = engaged * log(GridRate(j)) + (delivered - engaged) * log(1 - GridRate(j));
		top = Max(top, like[j]);
	}
	for (int j = 0; j < SENDTIME_GRID; j++)
		like[j] = exp(like[j] - top);
}

/* The mean of a prior updated with engaged of delivered (no data: its mean). */
static double
PosteriorMean(const double *w, double engaged, double delivered)
{
	double		like[SENDTIME_GRID];
	double		num = 0,
				den = 0;

	GridLikelihood(engaged, delivered, like);
	for (int j = 0; j < SENDTIME_GRID; j++)
	{
		num += w[j] * like[j] * GridRate(j);
		den += w[j] * like[j];
	}
	return den > 0 ? num / den : 0;
}

/*
 * Fits the prior w of channel ``name`` to the sampled people's messages on
 * it (those of activity group ``group``; -2: everyone): the weights of the
 * grid's rates that make their (delivered, engaged) counts most likely,
 * found by EM, with ``wider`` counting as SENDTIME_POOLED_PEOPLE more
 * people.  A likelihood, because the messages were chosen by this very
 * rule: who got more of a channel depends on their clicks, which moments
 * would count twice and a likelihood does not.  Returns the people.
 */
static int
FitPrior(double *w, const double *wider, const ChannelObservation *obs, const double *like,
		 int nobs, const char *name, int group)
{
	int			people = 0;

	memcpy(w, wider, sizeof(double) * SENDTIME_GRID);
	for (int k = 0; k < nobs; k++)
		if (obs[k].delivered > 0 && strcmp(obs[k].name, name) == 0 &&
			(group == -2 || obs[k].group == group))
			people++;
	if (people == 0)
		return 0;
	for (int round = 0; round < SENDTIME_EM_ROUNDS; round++)
	{
		double		acc[SENDTIME_GRID] = {0};

		CHECK_FOR_INTERRUPTS();
		for (int k = 0; k < nobs; k++)
		{
			const double *l = like + (size_t) k * SENDTIME_GRID;
			double		den = 0;

			if (obs[k].delivered <= 0 || strcmp(obs[k].name, name) != 0 ||
				(group != -2 && obs[k].group != group))
				continue;
			for (int j = 0; j < SENDTIME_GRID; j++)
				den += w[j] * l[j];
			if (den <= 0)
				continue;
			for (int j = 0; j < SENDTIME_GRID; j++)
				acc[j] += w[j] * l[j] / den;
		}
		for (int j = 0; j < SENDTIME_GRID; j++)
			w[j] = (acc[j] + SENDTIME_POOLED_PEOPLE * wider[j]) / (people + SENDTIME_POOLED_PEOPLE);
	}
	return people;
}

/*
 * Fits the priors: the base (a Beta of SENDTIME_BASE_STRENGTH messages at
 * the overall rate, on the grid), each channel's from everyone's messages
 * on it with the base as the wider prior, and each activity group's from
 * its people's with the channel's as the wider prior.
 */
static void
FitPriors(Population *pop, const ChannelObservation *obs, int nobs)
{
	double	   *like = palloc(sizeof(double) * SENDTIME_GRID * Max(nobs, 1));
	double		d = 0,
				e = 0,
				sum = 0;

	for (int i = 0; i < pop->nchannels; i++)
	{
		d += pop->channels[i].delivered;
		e += pop->channels[i].engaged;
	}
	pop->overall = (e + 1) / (d + 2);
	for (int j = 0; j < SENDTIME_GRID; j++)
	{
		pop->base[j] = pow(GridRate(j), SENDTIME_BASE_STRENGTH * pop->overall - 1) *
			pow(1 - GridRate(j), SENDTIME_BASE_STRENGTH * (1 - pop->overall) - 1);
		sum += pop->base[j];
	}
	for (int j = 0; j < SENDTIME_GRID; j++)
		pop->base[j] /= sum;
	for (int k = 0; k < nobs; k++)
		GridLikelihood(obs[k].engaged, obs[k].delivered, like + (size_t) k * SENDTIME_GRID);
	pop->weights = MemoryContextAlloc(TopMemoryContext, sizeof(double) * SENDTIME_GRID *
									  (1 + pop->ngroups) * Max(pop->nchannels, 1));
	for (int i = 0; i < pop->nchannels; i++)
	{
		pop->fitted[i] = FitPrior(Weights(pop, -1, i), pop->base, obs, like, nobs,
								  pop->channels[i].name, -2);
		for (int g = 0; g < pop->ngroups; g++)
			FitPrior(Weights(pop, g, i), Weights(pop, -1, i), obs, like, nobs,
					 pop->channels[i].name, g);
	}
	pfree(like);
}

/*
 * The prior of a channel for a person of activity group ``group`` (-1: not
 * known): the group's, else the channel's, else (no one in the sample got
 * the channel) the base.
 */
static const double *
PriorOf(const Population *pop, int group, const char *channel)
{
	for (int i = 0; i < pop->nchannels; i++)
		if (strcmp(pop->channels[i].name, channel) == 0)
			return Weights(pop, group, i);
	return pop->base;
}

/* Recomputes the population's figures from a sample of profiles. */
static void
ComputePopulation(void)
{
	Population *pop = &population;
	Oid			type = FLOAT8OID;
	Datum		pct;
	SPITupleTable *sample;
	uint64		nsample;
	double		rows;
	bool		isnull;
	int			ret;
	ChannelCount own[SENDTIME_MAX_CHANNELS];
	int			nown;
	char		activity[NAMEDATALEN];
	int			group;
	int			maxobs = 256;
	int			nobs = 0;
	ChannelObservation *obs = palloc(sizeof(ChannelObservation) * maxobs);

	/* Sample about SENDTIME_SAMPLE profiles' pages (all when small). */
	ret = SPI_execute("SELECT GREATEST(c.reltuples::pg_catalog.float8, "
					  "  (pg_catalog.pg_relation_size(c.oid) OPERATOR(pg_catalog./) 8192 "
					  "   OPERATOR(pg_catalog.*) 40)::pg_catalog.float8) FROM pg_catalog.pg_class AS c "
					  "WHERE c.oid OPERATOR(pg_catalog.=) 'persona.profiles'::pg_catalog.regclass",
					  true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "sizing persona.profiles failed");
	rows = DatumGetFloat8(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	pct = Float8GetDatum(rows <= SENDTIME_SAMPLE ? 100.0 : Max(100.0 * SENDTIME_SAMPLE / rows, 0.0001));
	if (SPI_execute_plan(PersonaKeptPlan(&sample_plan,
										 "SELECT p.profile_id, p.traits OPERATOR(pg_catalog.->>) 'timezone' "
										 "FROM persona.profiles AS p TABLESAMPLE pg_catalog.system ($1) REPEATABLE (16) "
										 "LIMIT " CppAsString2(SENDTIME_SAMPLE),
										 1, &type, 0),
						 &pct, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "sampling profiles failed");
	sample = SPI_tuptable;
	nsample = SPI_processed;

	if (pop->weights)
		pfree(pop->weights);
	memset(pop, 0, sizeof(Population));
	for (uint64 i = 0; i < nsample; i++)
	{
		double		counts[HOURS_PER_WEEK] = {0};
		int64		pid;
		char	   *zone;
		double		total;

		CHECK_FOR_INTERRUPTS();
		pid = DatumGetInt64(SPI_getbinval(sample->vals[i], sample->tupdesc, 1, &isnull));
		zone = SPI_getvalue(sample->vals[i], sample->tupdesc, 2);
		total = CountMoments(pid, NULL, PersonZone(zone), counts);
		pop->people++;
		if (total >= SENDTIME_MIN_MOMENTS)
		{
			pop->engaged_people++;
			for (int h = 0; h < HOURS_PER_WEEK; h++)
				pop->share[h] += counts[h] / total;
		}

		/* the person's messages: to the population, their group, the fit */
		nown = 0;
		CountChannels(pid, own, &nown);
		ActivityChannel(pid, activity);
		group = FindGroup(pop, activity, true);
		if (group >= 0)
			pop->groups[group].people++;
		for (int k = 0; k < nown; k++)
		{
			ChannelCount *c = FindChannel(pop->channels, &pop->nchannels, own[k].name);

			if (c != NULL)
			{
				c->delivered += own[k].delivered;
				c->engaged += own[k].engaged;
			}
			if (nobs == maxobs)
			{
				maxobs *= 2;
				obs = repalloc(obs, sizeof(ChannelObservation) * maxobs);
			}
			obs[nobs].group = group;
			strlcpy(obs[nobs].name, own[k].name, NAMEDATALEN);
			obs[nobs].delivered = own[k].delivered;
			obs[nobs].engaged = own[k].engaged;
			nobs++;
		}
	}
	if (pop->engaged_people > 0)
		for (int h = 0; h < HOURS_PER_WEEK; h++)
			pop->share[h] /= pop->engaged_people;
	FitPriors(pop, obs, nobs);
	SPI_freetuptable(sample);
	pop->profiles = PersonaGetCatalog()->profiles;
	pop->computed_at = GetCurrentTimestamp();
	pop->valid = true;
}

/* The population's figures, computed when absent, stale or of another install. */
static const Population *
GetPopulation(void)
{
	if (!population.valid ||
		population.profiles != PersonaGetCatalog()->profiles ||
		GetCurrentTimestamp() - population.computed_at > SENDTIME_POPULATION_TTL)
		ComputePopulation();
	return &population;
}

/*
 * The hour of the week to send in, among the ``hours`` hours from the one
 * ``after`` is in: the person's (counts, total) when total reaches
 * SENDTIME_MIN_MOMENTS, else the population's; among equal scores the one
 * that comes first after ``after``.
 */
static int
BestHour(const double *counts, double total, const Population *pop,
		 TimestampTz after, int hours, pg_tz *tz, bool *fallback)
{
	int			start = HourOfWeek(after, tz);
	int			best = -1;
	double		best_score = -1;

	*fallback = total < SENDTIME_MIN_MOMENTS;
	if (start < 0)
		start = 0;
	for (int k = 0; k < hours; k++)
	{
		int			h = (start + k) % HOURS_PER_WEEK;
		double		score;

		if (!*fallback)
			score = counts[h] +
				0.5 * (counts[(h + 1) % HOURS_PER_WEEK] +
					   counts[(h + HOURS_PER_WEEK - 1) % HOURS_PER_WEEK]) +
				SENDTIME_PRIOR * pop->share[h];
		else if (pop->engaged_people > 0)
			score = pop->share[h];
		else
			score = (h % 24 == SENDTIME_DEFAULT_HOUR) ? 1 : 0;
		if (score > best_score)
		{
			best_score = score;
			best = h;
		}
	}
	return best;
}

/*
 * The best send time of a profile (not known: the population's), within
 * ``hours`` hours from the one ``after`` is in (1 to HOURS_PER_WEEK).
 */
TimestampTz
PersonaBestSendAt(int64 profile_id, bool known, TimestampTz after, const char *channel,
				  int hours, bool *fallback)
{
	double		counts[HOURS_PER_WEEK] = {0};
	double		total = 0;
	char	   *zone = NULL;
	pg_tz	   *tz;
	const Population *pop;

	/* there is no next moment after infinity, nor a best hour before it */
	if (TIMESTAMP_NOT_FINITE(after))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("after must be a finite timestamp")));
	pop = GetPopulation();
	if (known && ReadProfile(profile_id, &zone, NULL))
	{
		tz = PersonZone(zone);
		total = CountMoments(profile_id, channel, tz, counts);
	}
	else
		tz = PersonZone(NULL);
	hours = Max(1, Min(hours, HOURS_PER_WEEK));
	return NextInHour(after, BestHour(counts, total, pop, after, hours, tz, fallback), tz);
}

/*
 * The candidate channels: the given array (checked: no NULL, valid names,
 * not "best"), or the channels of the actions defined, in name order.
 */
static char **
CandidateChannels(ArrayType *given, int *n)
{
	char	  **names;

	if (given != NULL)
	{
		Datum	   *elems;
		bool	   *nulls;
		int			nelems;

		if (ARR_NDIM(given) > 1)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("channels must be a one-dimensional array")));
		deconstruct_array(given, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &nelems);
		if (nelems > SENDTIME_MAX_CHANNELS)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("at most %d channels can be compared", SENDTIME_MAX_CHANNELS)));
		names = palloc(sizeof(char *) * Max(nelems, 1));
		for (int i = 0; i < nelems; i++)
		{
			if (nulls[i])
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("channels must not contain null")));
			names[i] = TextDatumGetCString(elems[i]);
			PersonaCheckChannel(names[i]);
			if (strcmp(names[i], PERSONA_BEST_CHANNEL) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("\"best\" is not a channel to choose"),
						 errhint("Name the channels to choose among, such as '{push,email}'.")));
		}
		*n = nelems;
		return names;
	}
	if (SPI_execute_plan(PersonaKeptPlan(&action_channels_plan,
										 "SELECT DISTINCT a.channel FROM persona.actions AS a "
										 "WHERE a.channel OPERATOR(pg_catalog.<>) '" PERSONA_BEST_CHANNEL "' "
										 "ORDER BY 1 LIMIT " CppAsString2(SENDTIME_MAX_CHANNELS),
										 0, NULL, 0),
						 NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading the channels of the actions failed");
	names = palloc(sizeof(char *) * Max(SPI_processed, 1));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		CHECK_FOR_INTERRUPTS();
		names[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
	}
	*n = (int) SPI_processed;
	return names;
}

/*
 * The best consented channel of a profile among the candidates (NULL: the
 * actions' channels), or NULL when none is consented.  Call within SPI.
 */
char *
PersonaBestChannel(int64 profile_id, bool known, ArrayType *channels)
{
	int			n;
	char	  **names = CandidateChannels(channels, &n);
	ChannelCount own[SENDTIME_MAX_CHANNELS];
	int			nown = 0;
	Jsonb	   *consent = NULL;
	char	   *zone;
	const Population *pop;
	char	   *best = NULL;
	double		best_score = -1;
	int			group = -1;

	if (n == 0)
		return NULL;
	pop = GetPopulation();
	if (known && ReadProfile(profile_id, &zone, &consent))
	{
		CountChannels(profile_id, own, &nown);
		/* activity tells nothing when the population has one group */
		if (pop->ngroups > 1)
		{
			char		activity[NAMEDATALEN];

			ActivityChannel(profile_id, activity);
			group = FindGroup((Population *) pop, activity, false);
		}
	}
	for (int i = 0; i < n; i++)
	{
		double		d = 0,
					e = 0,
					score;

		if (!PersonaConsented(consent, names[i]))
			continue;
		for (int k = 0; k < nown; k++)
			if (strcmp(own[k].name, names[i]) == 0)
			{
				d = own[k].delivered;
				e = own[k].engaged;
			}
		score = PosteriorMean(PriorOf(pop, group, names[i]), e, d);
		if (score > best_score)
		{
			best_score = score;
			best = names[i];
		}
	}
	return best;
}

/* persona.best_send_at(profile_id, after, channel, within): the internal entry */
PG_FUNCTION_INFO_V1(persona_best_send_at);
Datum
persona_best_send_at(PG_FUNCTION_ARGS)
{
	char	   *channel = NULL;
	TimestampTz result;
	bool		fallback;
	int			hours = HOURS_PER_WEEK;

	if (PG_ARGISNULL(1))
		PersonaNullError("after");
	if (!PG_ARGISNULL(2))
	{
		channel = text_to_cstring(PG_GETARG_TEXT_PP(2));
		PersonaCheckChannel(channel);
	}
	if (PG_NARGS() > 3 && !PG_ARGISNULL(3))
	{
		Interval   *within = PG_GETARG_INTERVAL_P(3);
		double		usecs = within->time +
		(double) within->day * USECS_PER_DAY +
		(double) within->month * DAYS_PER_MONTH * USECS_PER_DAY;

		if (usecs <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("within must be positive"),
					 errhint("Use an interval such as '24 hours'.")));
		hours = (int) Min(ceil(usecs / USECS_PER_HOUR), HOURS_PER_WEEK);
	}
	SPI_connect();
	result = PersonaBestSendAt(PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0), !PG_ARGISNULL(0),
							   PG_GETARG_TIMESTAMPTZ(1), channel, hours, &fallback);
	SPI_finish();
	PG_RETURN_TIMESTAMPTZ(result);
}

/* persona.best_channel_of(profile_id, channels): the internal entry */
PG_FUNCTION_INFO_V1(persona_best_channel_of);
Datum
persona_best_channel_of(PG_FUNCTION_ARGS)
{
	MemoryContext outer = CurrentMemoryContext;
	char	   *best;
	text	   *result = NULL;

	SPI_connect();
	best = PersonaBestChannel(PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0), !PG_ARGISNULL(0),
							  PG_ARGISNULL(1) ? NULL : PG_GETARG_ARRAYTYPE_P(1));
	if (best != NULL)
	{
		MemoryContext spi = MemoryContextSwitchTo(outer);

		result = cstring_to_text(best);
		MemoryContextSwitchTo(spi);
	}
	SPI_finish();
	if (result == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(result);
}

/* persona.refresh_engagement(): recomputes the population's figures, shown */
PG_FUNCTION_INFO_V1(persona_refresh_engagement);
Datum
persona_refresh_engagement(PG_FUNCTION_ARGS)
{
	const Population *pop;
	StringInfoData buf;
	int			best = 0;

	SPI_connect();
	population.valid = false;
	pop = GetPopulation();
	SPI_finish();

	for (int h = 1; h < HOURS_PER_WEEK; h++)
		if (pop->share[h] > pop->share[best])
			best = h;
	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"sampled_profiles\": %d, \"profiles_with_history\": %d, "
					 "\"best_hour_of_week\": ", pop->people, pop->engaged_people);
	if (pop->engaged_people > 0)
		appendStringInfo(&buf, "%d", best);
	else
		appendStringInfoString(&buf, "null");
	appendStringInfoString(&buf, ", \"channels\": {");
	for (int i = 0; i < pop->nchannels; i++)
		appendStringInfo(&buf, "%s\"%s\": {\"delivered\": %.0f, \"engaged\": %.0f, \"prior\": %.4f, "
						 "\"fitted_on\": %d}",
						 i > 0 ? ", " : "", pop->channels[i].name, pop->channels[i].delivered,
						 pop->channels[i].engaged, PosteriorMean(Weights(pop, -1, i), 0, 0),
						 pop->fitted[i]);
	appendStringInfoString(&buf, "}, \"activity\": [");
	for (int g = 0; g < pop->ngroups; g++)
	{
		appendStringInfo(&buf, "%s{\"channel\": ", g > 0 ? ", " : "");
		if (pop->groups[g].name[0] == '\0')
			appendStringInfoString(&buf, "null");
		else
			escape_json(&buf, pop->groups[g].name);
		appendStringInfo(&buf, ", \"people\": %d, \"priors\": {", pop->groups[g].people);
		for (int i = 0; i < pop->nchannels; i++)
			appendStringInfo(&buf, "%s\"%s\": %.4f", i > 0 ? ", " : "", pop->channels[i].name,
							 PosteriorMean(Weights(pop, g, i), 0, 0));
		appendStringInfoString(&buf, "}}");
	}
	appendStringInfoString(&buf, "]}");
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}
