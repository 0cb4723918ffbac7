-- Events age out: time partitions of persona.events, made ahead and dropped
-- when old (docs/operations.md, "Events age out"). Dropping a partition
-- deletes no row through SQL: profiles, lifetime traits and windowed trait
-- states keep what the dropped events contributed. (pg_partman 4.7 cannot
-- manage persona.events: docs/operations.md says why.)

-- The partitions [lo, lo + step) that cover since .. through, aligned on
-- whole months (a step of months) or on multiples of step from 2000-01-01
-- UTC (any other step), named events_pYYYYMMDD[_HH24MI] after lo in UTC,
-- each with the primary key every partition has (src/schema.sql).
CREATE FUNCTION persona.add_event_partitions(through timestamptz,
                                             step interval DEFAULT '1 month',
                                             since timestamptz DEFAULT now())
    RETURNS int
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET persona.maintenance = on
    AS $$
DECLARE
    v_months int;
    v_lo     timestamptz;
    v_hi     timestamptz;
    v_name   text;
    v_made   int := 0;
BEGIN
    IF through IS NULL OR step IS NULL OR since IS NULL THEN
        RAISE EXCEPTION 'through, step and since must not be null' USING ERRCODE = '22004';
    END IF;
    IF NOT isfinite(through) OR NOT isfinite(since) THEN
        RAISE EXCEPTION 'through and since must be finite' USING ERRCODE = '22008';
    END IF;
    v_months := extract(year FROM step)::int * 12 + extract(month FROM step)::int;
    IF v_months > 0 AND step = make_interval(months => v_months) THEN
        v_lo := date_trunc('month', since AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    ELSIF v_months = 0 AND step >= interval '1 minute' AND step <= interval '366 days'
          AND extract(second FROM step) = 0 THEN
        v_lo := date_bin(step, since, timestamptz '2000-01-01 00:00:00+00');
    ELSE
        RAISE EXCEPTION 'step must be whole months, or whole minutes from 1 minute to 366 days'
            USING ERRCODE = '22023',
                  DETAIL = format('The step given was "%s".', step),
                  HINT = 'Use a step such as ''1 month'', ''7 days'' or ''1 day''.';
    END IF;
    IF through > since + 1000 * step THEN
        RAISE EXCEPTION 'add_event_partitions would create more than 1000 partitions'
            USING ERRCODE = '54000',
                  DETAIL = format('From %s to %s by %s.', since, through, step);
    END IF;

    WHILE v_lo <= through LOOP
        v_hi := (v_lo AT TIME ZONE 'UTC' + step) AT TIME ZONE 'UTC';
        v_name := 'events_p' || to_char(v_lo AT TIME ZONE 'UTC', 'YYYYMMDD')
                  || CASE WHEN v_months = 0 AND (step < interval '1 day'
                                                 OR date_trunc('day', v_lo AT TIME ZONE 'UTC') <> v_lo AT TIME ZONE 'UTC')
                          THEN to_char(v_lo AT TIME ZONE 'UTC', '_HH24MI') ELSE '' END;
        IF to_regclass(format('persona.%I', v_name)) IS NULL THEN
            -- Creating or attaching a partition locks persona.events
            -- exclusively anyway; taken first, the lock waits for ingest in
            -- flight, so the default partition's rows checked below are all
            -- there are, and locks go in ingest's order (persona.events,
            -- then its partitions): no deadlock with it.
            LOCK TABLE ONLY persona.events IN ACCESS EXCLUSIVE MODE;
            IF EXISTS (SELECT FROM persona.events_default AS d
                        WHERE d.occurred_at >= v_lo AND d.occurred_at < v_hi) THEN
                -- Rows of that range wait in the default partition: they
                -- move, as stored (a table that is not yet a partition has
                -- no trigger), before the new one is attached.
                EXECUTE format('CREATE TABLE persona.%I (LIKE persona.events INCLUDING DEFAULTS,
                                                          PRIMARY KEY (profile_id, occurred_at, event_id))', v_name);
                EXECUTE format('WITH moved AS (DELETE FROM persona.events_default AS d
                                                WHERE d.occurred_at >= $1 AND d.occurred_at < $2
                                            RETURNING d.*)
                                INSERT INTO persona.%I SELECT * FROM moved', v_name)
                  USING v_lo, v_hi;
                EXECUTE format('ALTER TABLE persona.events ATTACH PARTITION persona.%I FOR VALUES FROM (%L) TO (%L)',
                               v_name, v_lo, v_hi);
            ELSE
                EXECUTE format('CREATE TABLE persona.%I PARTITION OF persona.events (
                                    PRIMARY KEY (profile_id, occurred_at, event_id)) FOR VALUES FROM (%L) TO (%L)',
                               v_name, v_lo, v_hi);
            END IF;
            v_made := v_made + 1;
        END IF;
        v_lo := v_hi;
    END LOOP;
    RETURN v_made;
END
$$;
COMMENT ON FUNCTION persona.add_event_partitions(timestamptz, interval, timestamptz) IS
    'creates the time partitions of persona.events from since through through, step long (rows waiting in the default partition move in); returns how many it created';

-- Retention: drops every time partition that ends at or before the cutoff,
-- and deletes the default partition's events older than it.
CREATE FUNCTION persona.drop_events_before(cutoff timestamptz)
    RETURNS int
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET persona.maintenance = on
    AS $$
DECLARE
    v_part    record;
    v_dropped int := 0;
BEGIN
    IF cutoff IS NULL THEN
        RAISE EXCEPTION 'cutoff must not be null' USING ERRCODE = '22004';
    END IF;
    -- Dropping a partition locks persona.events exclusively: taken first,
    -- in ingest's order (persona.events, then its partitions).
    LOCK TABLE ONLY persona.events IN ACCESS EXCLUSIVE MODE;
    FOR v_part IN
        SELECT c.relname, b.upper
          FROM pg_inherits AS i
          JOIN pg_class AS c ON c.oid = i.inhrelid
          CROSS JOIN LATERAL (
              SELECT (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                   'TO \(''([^'']*)''\)'))[1]::timestamptz AS upper) AS b
         WHERE i.inhparent = 'persona.events'::regclass
           AND b.upper IS NOT NULL AND b.upper <= cutoff
         ORDER BY b.upper
    LOOP
        EXECUTE format('DROP TABLE persona.%I', v_part.relname);
        v_dropped := v_dropped + 1;
    END LOOP;
    DELETE FROM persona.events_default AS d WHERE d.occurred_at < cutoff;
    RETURN v_dropped;
END
$$;
COMMENT ON FUNCTION persona.drop_events_before(timestamptz) IS
    'drops the partitions of persona.events that end at or before cutoff and the default partition''s older events; profiles and traits keep them counted; returns partitions dropped';
