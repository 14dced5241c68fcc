"""Generate the small, deterministic logged-traffic demo set in data/demo.

Each record is a prompt (about 5% are a short OpenAI-style chat instead) built from the templates
below, plus what EVERY model in a fictional catalog did with it: an offline evaluation. Outcomes
follow a known generative model, so a router trained on the data can be checked against it:

    p       = sigmoid(2.0 * (SKILL[model][task] - difficulty_effect)),  effect = f(difficulty) + hidden noise
    quality = 1.0 with probability p (binary-graded tasks), else clip(p + N(0, 0.05), 0, 1)
    cost    = (input_tokens * input_per_mtok + output_tokens * output_per_mtok) / 1e6   (USD)

Difficulty (1..5) shows in the text (steps, number sizes, passage length, constraints), so it
can be learned from the prompt alone. Usage, standard library only, same bytes on every run:

    python3 scripts/make_demo_data.py [--n 4000] [--seed 0] [--out-dir data/demo]
"""

import argparse
import functools
import itertools
import json
import math
import random
import string
from pathlib import Path

GENERATOR = "make_demo_data.py v1"
# USD per 1M tokens (input, output), cheapest first: the dearest is exactly 100x the cheapest.
PRICES = {"tiny-1b": (0.05, 0.10), "small-8b": (0.20, 0.40), "code-34b": (0.60, 1.20), "large-70b": (1.50, 3.00),
          "frontier-xl": (5.00, 10.00)}
MODELS = list(PRICES)
FAMILIES = ["arithmetic", "code", "summarisation", "chitchat", "factual_qa", "reasoning", "translation"]
FAMILY_WEIGHTS = [17, 18, 13, 15, 14, 12, 11]
BINARY = {"arithmetic", "code", "factual_qa", "reasoning"}  # right or wrong; the rest is graded
# Skill shares the scale of DIFFICULTY_EFFECT (skill == effect gives p = 0.5); columns follow FAMILIES.
# code-34b is the specialist: the best value on code, weak at summarising and translating.
SKILL = {m: dict(zip(FAMILIES, row, strict=True)) for m, row in {
    "tiny-1b":     [1.4, 1.2, 2.6, 4.5, 2.0, 1.2, 2.2],
    "small-8b":    [2.4, 2.2, 3.4, 5.0, 3.0, 2.2, 3.2],
    "code-34b":    [3.4, 5.3, 2.6, 3.6, 3.0, 3.4, 2.8],
    "large-70b":   [4.0, 4.2, 4.6, 5.2, 4.4, 4.0, 4.4],
    "frontier-xl": [5.6, 5.8, 5.4, 5.5, 5.6, 5.6, 5.4]}.items()}
DIFFICULTY_EFFECT = {1: 0.5, 2: 1.5, 3: 2.5, 4: 3.5, 5: 4.5}
HIDDEN_SD = 0.35  # per-prompt hardness that the text does not show; the same for every model
DIFFICULTY_WEIGHTS = [30, 25, 20, 15, 10]  # real traffic is mostly easy
CHITCHAT_WEIGHTS = [50, 35, 15]  # small talk stops at difficulty 3
# Output tokens at difficulty 1 (translation instead scales with its input), each model's verbosity multiplier,
# and its speed as (output tokens per second, fixed overhead in seconds).
OUT_BASE = {"arithmetic": 110, "code": 260, "summarisation": 120, "chitchat": 50, "factual_qa": 90, "reasoning": 200}
VERBOSITY = {"tiny-1b": 0.8, "small-8b": 0.95, "code-34b": 1.1, "large-70b": 1.1, "frontier-xl": 1.3}
SPEED = {"tiny-1b": (250, 0.12), "small-8b": (160, 0.18), "code-34b": (90, 0.30), "large-70b": (60, 0.40),
         "frontier-xl": (45, 0.60)}
CHAT_SHARE = 0.05

# Word lists and templates, one "key: a|b|c" per line; an indented line continues the one above. "task.d" keys hold
# the templates of a task at difficulty d. A {slot} draws from the key of that name (numeric slots from NUMBERS),
# {slot2} a second, different value; values may nest {slots}. Kept as text so the data reads as data.
WORDS = r"""
name: Ava|Ben|Chloe|Dev|Elena|Farid|Grace|Hiro|Isla|Jamal|Kira|Liam|Maya|Noah|Olga|Priya|Quinn|Rosa|Sam|Tariq|Uma|
    Victor|Wen|Yusuf|Zoe|Marta|Kofi|Ines|Lars|Mei
item: apples|stickers|marbles|books|coins|cupcakes|seashells|trading cards|pencils|tomatoes|stamps|bottle caps|beads|
    postcards|jars of jam|comic books
lang: Python|JavaScript|TypeScript|Go|Rust|Java|C#|C++|Kotlin|Ruby
ent: users|orders|invoices|sensor readings|log lines|transactions|products|events|tickets|songs
field: price|timestamp|score|age|duration|quantity|rating|priority
fn: total_{field}|filter_{field}|dedupe_by_{field}|merge_{field}s|rank_by_{field}|group_by_{field}|normalise_{field}|
    bucket_{field}s
size: 10|50|100|256|1000|4096
agg: sum|largest value|smallest value|average|number of even values|product
simple: reverse a string|read a file line by line|sort a list in descending order|get the current date|convert a
    string to an integer|check if a list is empty
symptom: always comes out too small|skips the first item|is wrong for one-element lists
code.1: Write a {lang} function that returns the {agg} of a list of numbers.|In {lang}, how do I {simple}?|Show me a
    one-line {lang} snippet to {simple}.
code.2: Write a {lang} function `{fn}` that takes a list of {ent} and returns those whose {field} is above a
    threshold.|Write a {lang} function that removes duplicate {ent} by {field}, keeping the order.|Write a {lang}
    function that counts how often each word appears in a text, ignoring case and punctuation.
code.3: Fix the bug in this Python function. It should return the total {field} of all {ent}, but it
    {symptom}:\n```python\ndef total_{field}(items):\n    total = 0\n    for i in range(1, len(items)):\n        total
    += items[i].{field}\n    return total\n```|Implement binary search in {lang} that returns the insertion index for
    a target {field} in a sorted list of {ent}.|Write a {lang} function `{fn}` that parses ISO-8601 timestamps from
    log lines and groups {ent} by day, with tests.
code.4: Implement an LRU cache in {lang} with O(1) get and put, holding at most {size} {ent}, plus unit tests for
    eviction.|This {lang} function `{fn}` compares every pair of {ent} and is O(n^2). Optimise it to O(n log n) and
    explain the trade-offs.|Write a thread-safe token-bucket rate limiter in {lang} allowing {size} {ent} per second,
    with tests under concurrent load.
code.5: Implement a lock-free multi-producer multi-consumer queue of {ent} in {lang}; prove it is linearizable and
    analyse ABA hazards.|Optimise an O(n^3) dynamic program that schedules {size} {ent} by {field} to O(n^2) in
    {lang}, and prove the new recurrence correct.|Implement a persistent red-black tree keyed by {field} in {lang},
    including delete, and prove every operation is O(log n).
country: France|Japan|Kenya|Peru|Canada|Norway|Vietnam|Egypt|Chile|Poland|Australia|Morocco|Portugal|Thailand|Ghana|
    Mexico|Finland|Nepal|Argentina|Ireland|Turkey|Hungary|Colombia|Iceland
element: gold|silver|iron|sodium|potassium|tin|lead|mercury|copper|helium|neon|tungsten|zinc
book: Pride and Prejudice|One Hundred Years of Solitude|Things Fall Apart|The Trial|Beloved|Don Quixote|War and Peace|
    The Left Hand of Darkness|Middlemarch|Invisible Man|Frankenstein
event: the fall of the Berlin Wall|the first Moon landing|the signing of the Magna Carta|the French Revolution|the
    invention of the printing press|the Meiji Restoration|the partition of India|the Chernobyl disaster|the founding
    of the United Nations
idea: photosynthesis|plate tectonics|inflation|vaccination|the greenhouse effect|tides|natural selection|public-key
    cryptography|monsoons|antibiotic resistance|nuclear fission|supply and demand|ocean acidification|the placebo
    effect
law: the ideal gas law|Kepler's third law|the Black-Scholes equation|Bernoulli's principle|the Navier-Stokes momentum
    equation|Snell's law|the Michaelis-Menten equation
factual_qa.1: What is the capital of {country}?|What currency is used in {country}?|What is the chemical symbol for
    {element}?|On which continent is {country}?
factual_qa.2: Who wrote {book}?|In which year did {event} happen?|What is the official language of {country}, and
    roughly how many people live there?
factual_qa.3: Explain how {idea} works in one paragraph.|What led to {event}, and why did it matter?|Why does
    {country} have the climate it has?
factual_qa.4: Compare the economies of {country} and {country2} since 1990, citing key dates.|Explain how {idea}
    relates to {idea2}, with a concrete example.|Trace the long-term consequences of {event}, with dates and
    the main turning points.
factual_qa.5: Give a rigorous account of {event}: the key primary sources, the competing scholarly interpretations,
    and where the evidence is weakest.|Derive {law} from first principles, state every assumption, and describe an
    experiment that tests where it breaks down.
greet: hi|hey|hello|yo|good morning|hiya|hey there|evening
intro: Long day here.|Quick break from work.|Just woke up.|Bored at the airport.
smallq: how are you today?|what's up?|how's your {period} going?|tell me something nice :)|got any fun plans for the
    {period}?|what's your favourite season?
period: morning|week|day|weekend|evening|holidays
petadj: fluffy|tiny|grumpy|very energetic|shy|clumsy
pet: kitten|puppy|parrot|hamster|tortoise|goldfish
genre: funny|scary|cosy|sci-fi|feel-good|animated
occasion: rainy Sunday|first date|family night|long flight
topic: cats|coffee|Mondays|penguins|programmers|bicycles|the weather|dentists
food: rice|eggs|spinach|chickpeas|tomatoes|feta|potatoes|lentils|mushrooms
feeling: nervous|overwhelmed|a bit lonely|excited but anxious|stuck|unmotivated
situation: a job interview|moving to a new city|my best friend moving away|starting university|a difficult talk with
    my manager|my first marathon
when: tomorrow|next week|this month
goal: stay calm|prepare|make the most of it|feel more confident
debate: pineapple on pizza|whether cats or dogs make better pets|the best Star Wars film|whether to split the bill
    evenly
chitchat.1: {greet}! {smallq}|{greet}! I'm {name}. {smallq}|{greet}! {intro} {smallq}
chitchat.2: What's a good name for a {petadj} {pet}?|Can you recommend a {genre} movie for a {occasion}?|Tell me a
    joke about {topic}.|What should I cook tonight with {food}, {food2} and {food3}?
chitchat.3: I'm feeling {feeling} about {situation} {when}. Can you help me think it through and suggest a few ways to
    {goal}?|My friend and I keep arguing about {debate}. Can you give me a balanced take and help me raise it kindly
    without spoiling the friendship?
target: French|Spanish|German|Italian|Portuguese|Japanese|Dutch|Polish|Swedish|Korean|Turkish
phrase: good morning|thank you very much|where is the train station?|I would like a coffee|see you tomorrow|how much
    does this cost?|happy birthday|I don't understand|the bill, please|nice to meet you|excuse me|what time is it?|I
    am lost|good night
sentence: {name} {tverb} the {thing} {tplace}.
tverb: left|found|painted|sold|forgot|repaired|borrowed
thing: blue bicycle|old clock|letter|kitchen table|umbrella|garden gate|red suitcase
tplace: at the station|yesterday|before dinner|in the rain|last summer|near the bridge
day: Monday|Friday|the end of the week
idiom: It's raining cats and dogs, so we'll have to play it by ear.|Don't count your chickens before they hatch.|
    Finishing the report was a piece of cake, but the meeting dragged on forever.|We're all in the same boat, so let's
    not beat around the bush.|The new manager really hit the ground running.
cause: a strike|flooding|a cyber attack|a port closure|a supplier insolvency
translation.1: Translate '{phrase}' into {target}.|How do you say '{phrase}' in {target}?|'{phrase}' in {target}?
translation.2: Translate this sentence into {target}: {sentence}|What is this in {target}? {sentence}
translation.3: Translate into {target}, keeping a formal tone: Dear {name2}, thank you for your message. {sentence} We
    will reply by {day}.
translation.4: Translate the following paragraph into {target}, rendering the idioms by meaning rather than word for
    word: {idiom} {idiom2} {sentence}
translation.5: Translate this contract clause into {target} using standard legal terminology, keep the defined terms
    in capitals, and add a translator's note for any term with no direct equivalent: "The SUPPLIER shall deliver the
    GOODS to {city} within {days} days; a delay caused by {cause} shall not constitute FORCE MAJEURE, save where
    notified within {notice} BUSINESS DAYS."
org: Northwind|Bluepeak Energy|Solara Foods|Kestrel Bank|Orbit Logistics|Helix Pharma|Lumen Retail
city: Riverton|Ashford|Port Elena|Greenvale|Millbrook|Stonehaven|Lakemont
surname: Okafor|Lindqvist|Moreau|Tanaka|Alvarez|Novak|Haddad
month: January|March|May|July|September|November
policy: expand bus routes|build a new library|ban cars from the old town|raise parking fees|convert the old mill into
    housing
finding: short daily walks improved sleep|remote work raised reported productivity|a low-salt diet lowered blood
    pressure|reading aloud sped up vocabulary growth
plan: open three new plants|halve its emissions|enter the Asian market|cut prices
harm: raise local rents|hurt small shops|increase traffic
benefit: new jobs|cleaner air|lower commuting times
issue: noise from construction|rising rents|the pending lawsuit|delayed repairs
news: {org} reported revenue of ${n} million for the quarter, up {pct}% from a year earlier.|The {city} city council
    voted {yes}-{no} to approve a plan to {policy}.|Researchers at the University of {city} found that {finding} in a
    study of {big} people.|{name} {surname}, chief executive of {org}, said the company would {plan} by {year}.|
    Critics argued the plan would {harm}, while supporters pointed to {benefit}.|Residents of {city} complained about
    {issue} at the {month} meeting.|The study's authors cautioned that the sample was small and follow-up lasted {m}
    months.|Shares of {org} moved {pct}% in early trading after the announcement.|Officials estimated the project
    would cost ${n} million and take {m} years to finish.|A spokesperson for {org} declined to comment on {issue}.|An
    earlier report had put the figure at ${n} million, a number {org} now disputes.|{org} also confirmed it would cut
    {big} jobs in {city} over the next {m} months.|Independent analysts said the results were in line with
    expectations for the sector.|The proposal to {policy} will return to the council for a final vote in {month}.|
    Attendance at the {month} meeting was the highest in {m} years, according to organisers.|Funding for the work came
    from a {n} million dollar grant awarded in {year}.
summarisation.1: Summarise this in one sentence:|TL;DR please:|Give me the gist of this:
summarisation.2: Summarise the following in two or three sentences:|Briefly summarise this news item:
summarisation.3: Summarise the passage below as three bullet points for a busy reader:|Write a short summary of this
    article, then state its main point in one line:
summarisation.4: Write a summary of under 80 words that keeps every figure and names each organisation:|Summarise this
    for a newsletter in under 100 words, keeping all numbers exact:
summarisation.5: Produce an executive summary of exactly 60 words for a board audience, preserve every number, then
    list any claims in the passage that contradict each other:|Summarise this for a regulator in under 120 words,
    separate verified facts from claims, and flag every figure that appears inconsistent:
add: {name} buys {k} more.|{other} gives {name} {k} more.|Then {name} finds another {k}.
sub: {name} gives {k} to {other}.|{name} loses {k} of them.|Then {name} sells {k}.
mul: A delivery arrives and {name}'s collection becomes {k} times as large.
div: {name} splits them equally into {k} boxes and keeps only one box.
pct: {name} donates {k}% of them to a school fair.
system: You are a helpful assistant.|You are a concise, friendly assistant.|You are an expert assistant. Answer
    accurately and say when you are unsure.|You are a helpful assistant for Acme Corp employees. Keep answers short.|
    You are a patient tutor. Explain your reasoning.
"""
NUMBERS = {"n": (2, 900), "pct": (1, 40), "big": (40, 9000), "m": (2, 18), "year": (2025, 2032), "yes": (5, 9),
           "no": (0, 4), "days": (5, 90), "notice": (2, 14)}
PREFIXES = {"code": ["", "", "Quick one: ", "Can you help? "],
            "factual_qa": ["", "", "Quick question: ", "Do you know this? "],
            "arithmetic": ["", "Solve: ", "Quick math question: ", "My kid asked me this: "]}


@functools.cache
def words() -> dict[str, list[str]]:
    """Parse WORDS on first use (not at import) into slot -> list of values."""
    lines = WORDS.replace("\n    ", " ").strip().splitlines()  # join continuation lines
    return {key: [w.strip().replace("\\n", "\n") for w in vals.split("|")]  # \n in code snippets
            for key, vals in (line.split(": ", 1) for line in lines)}


def fill(rng: random.Random, template: str, vals: dict[str, str] | None = None) -> str:
    """Fill every {slot} once; {slot2} gets a value not used yet. Nested values share `vals`, so that
    {fn} = "rank_by_{field}" and the template's own {field} agree."""
    vals = {} if vals is None else vals
    for _, slot, _, _ in string.Formatter().parse(template):
        if slot is None or slot in vals:
            continue
        base = slot.rstrip("0123456789")
        if base in NUMBERS:
            vals[slot] = str(rng.randint(*NUMBERS[base]))
        else:
            value = rng.choice([w for w in words()[base] if w not in vals.values()])
            vals[slot] = fill(rng, value, vals) if "{" in value else value
    return template.format(**vals)


def gen_templated(rng: random.Random, task: str, d: int) -> str:
    """Fill a random template of the task at difficulty d (the "task.d" key of WORDS)."""
    return fill(rng, rng.choice(words()[f"{task}.{d}"]))


def gen_arithmetic(rng: random.Random, task: str, d: int) -> str:
    """A word problem with d operations; number sizes and kinds of operation grow with d."""
    name, other = rng.sample(words()["name"], 2)
    item, hi = rng.choice(words()["item"]), [0, 12, 40, 150, 800, 5000][d]
    value = rng.randint(3, hi)
    parts = [f"{name} has {value} {item}."]
    ops = ["add", "sub"] + ["mul"] * (d >= 2) + ["div", "pct"] * (d >= 3)
    while len(parts) <= d:  # `value` is tracked so that every step leaves a whole, positive count
        op = rng.choice(ops)
        ks = {"add": range(2, hi + 1), "sub": range(1, value), "mul": range(2, 5) if value < 10 * hi else [],
              "div": [k for k in (2, 3, 4, 5, 6) if value % k == 0 and value > k],
              "pct": [k for k in (10, 20, 25, 50, 75) if value * k % 100 == 0]}[op]
        if ks:
            k = rng.choice(ks)
            parts.append(fill(rng, rng.choice(words()[op]), {"name": name, "other": other, "k": str(k)}))
            value = {"add": value + k, "sub": value - k, "mul": value * k, "div": value // k,
                     "pct": value - value * k // 100}[op]
    q = rng.choice([f"How many {item} does {name} have now?", f"How many {item} are left?"])
    if d >= 4 and rng.random() < 0.5:
        price = f"${rng.randint(2, 19)}.{rng.choice(['25', '50', '75'])}"
        q = f"If each one sells for {price}, how much are the rest worth?"
    tail = ["", "", " Show each step of your working.", " Work through it step by step and check your answer.",
            " Give every intermediate result, then the final answer."][d - 1]
    return " ".join([*parts, q]) + tail


def gen_reasoning(rng: random.Random, task: str, d: int) -> str:
    """Logic puzzles: a syllogism, ordering puzzles with d + 1 people, knights and knaves."""
    if d == 1:
        return fill(rng, "If every {pet} in the {city} shelter is {petadj}, and {name}'s {pet} is from the {city} "
                         "shelter, is it {petadj}? Answer yes or no.")
    people = rng.sample(words()["name"], d + 1 if d <= 4 else rng.choice([3, 4]))
    if d <= 4:  # `people` is the true order, most first; each clue names two neighbours
        rel, most, least = rng.choice([("taller than", "tallest", "shortest"), ("older than", "oldest", "youngest"),
                                       ("faster than", "fastest", "slowest"), ("richer than", "richest", "poorest")])
        clues = [f"{a} is {rel} {b}." for a, b in itertools.pairwise(people)]
        rng.shuffle(clues)
        ask = {2: f"Who is the {rng.choice([most, least])}?",
               3: f"Who is the {rng.choice([most, least])}? Explain briefly.",
               4: f"List everyone from {most} to {least} and justify each step."}[d]
        return " ".join(clues) + " " + ask
    knight = {p: rng.random() < 0.5 for p in people}
    lines = []
    for p in people:  # a knight's claim is true and a knave's false, so some assignment fits
        other = rng.choice([x for x in people if x != p])
        kind = "knight" if knight[other] == knight[p] else "knave"
        lines.append(f'{p} says: "{other} is a {kind}."')
    return (f"On an island, knights always tell the truth and knaves always lie. You meet {', '.join(people)}. "
            f"{' '.join(lines)} Find every consistent assignment of knights and knaves and prove there are no others.")


def gen_summarisation(rng: random.Random, task: str, d: int) -> str:
    """An instruction plus a generated news passage; longer and stricter as d grows."""
    k = [0, 2, 4, 6, 9, 12][d] + rng.randint(0, 1)
    passage = " ".join(fill(rng, s) for s in rng.sample(words()["news"], k))
    return f"{gen_templated(rng, task, d)}\n\n{passage}"


# name -> generator(rng, task, difficulty) -> task text; tasks not listed use gen_templated.
GENERATORS = {"arithmetic": gen_arithmetic, "reasoning": gen_reasoning, "summarisation": gen_summarisation}


def p_success(model: str, task: str, effect: float) -> float:
    """The chance that `model` does `task` well at this difficulty effect: the core of the generative model."""
    return 1.0 / (1.0 + math.exp(-2.0 * (SKILL[model][task] - effect)))


def cost_usd(model: str, input_tokens: int, output_tokens: int) -> float:
    """Cost in USD by the prices.toml formula, rounded to 10 significant digits."""
    pin, pout = PRICES[model]
    return float(f"{(input_tokens * pin + output_tokens * pout) / 1e6:.10g}")


def outcomes_for(rng: random.Random, task: str, d: int, text: str) -> dict:
    """Simulate every model on one prompt. `text` is all that was sent (system + user), as a provider bills it:
    wider than the routed text of router_ml.messages, which is the last user turn."""
    effect = DIFFICULTY_EFFECT[d] + rng.gauss(0.0, HIDDEN_SD)
    input_tokens = math.ceil(len(text) / 4)
    # A translation is as long as its source; other answers grow with task and difficulty.
    base = input_tokens * 1.1 if task == "translation" else OUT_BASE[task] * (1 + 0.3 * (d - 1))
    out = {}
    for m in MODELS:
        p = p_success(m, task, effect)
        if task in BINARY:
            quality = float(rng.random() < p)
        else:
            quality = round(min(1.0, max(0.0, p + rng.gauss(0.0, 0.05))), 4)
        otok = max(1, round(base * VERBOSITY[m] * rng.lognormvariate(0.0, 0.25)))
        tps, overhead = SPEED[m]
        out[m] = {"quality": quality, "cost": cost_usd(m, input_tokens, otok), "input_tokens": input_tokens,
                  "output_tokens": otok, "latency_s": round((overhead + otok / tps) * rng.lognormvariate(0, 0.1), 3)}
    return out


def generate(n: int, seed: int) -> list[dict]:
    """Build n records whose task texts are all distinct: a duplicate is redrawn, never kept."""
    rng, seen, records = random.Random(seed), set(), []
    while len(records) < n:
        task = rng.choices(FAMILIES, weights=FAMILY_WEIGHTS)[0]
        w = CHITCHAT_WEIGHTS if task == "chitchat" else DIFFICULTY_WEIGHTS
        d = rng.choices(range(1, len(w) + 1), weights=w)[0]
        gen, prefixes = GENERATORS.get(task, gen_templated), PREFIXES.get(task, [""])
        for _ in range(50):  # a small (task, difficulty) space can run dry: then redraw both
            text = rng.choice(prefixes) + gen(rng, task, d)
            if text not in seen:
                break
        else:
            continue
        seen.add(text)
        rec: dict = {"sample_id": f"demo-{len(records) + 1:05d}"}
        if rng.random() < CHAT_SHARE:
            system = rng.choice(words()["system"])
            rec["messages"] = [{"role": "system", "content": system}, {"role": "user", "content": text}]
            routed = "\n".join(msg["content"] for msg in rec["messages"])
        else:
            rec["prompt"] = routed = text
        rec.update(task=task, outcomes=outcomes_for(rng, task, d, routed),
                   metadata={"difficulty": d, "generator": GENERATOR})
        records.append(rec)
    return records


def reference_choice(task: str, d: int, slack: float = 0.05) -> str:
    """The known-good route: the cheapest model whose expected p is within `slack` of the best."""
    ps = {m: p_success(m, task, DIFFICULTY_EFFECT[d]) for m in MODELS}
    return next(m for m in MODELS if ps[m] >= max(ps.values()) - slack)  # MODELS: cheapest first


def summarise(records: list[dict]) -> dict:
    """Headline facts: per-model means, the per-prompt oracle, and the reference router."""
    n, sig4 = len(records), lambda x: float(f"{x:.4g}")
    per_model = {m: {"mean_quality": round(sum(r["outcomes"][m]["quality"] for r in records) / n, 4),
                     "mean_cost": sig4(sum(r["outcomes"][m]["cost"] for r in records) / n)} for m in MODELS}
    oq = oc = rq = rc = 0.0
    for r in records:
        o = r["outcomes"]
        best = max(v["quality"] for v in o.values())
        oq += best
        oc += min(v["cost"] for v in o.values() if v["quality"] == best)
        pick = o[reference_choice(r["task"], r["metadata"]["difficulty"])]
        rq, rc = rq + pick["quality"], rc + pick["cost"]
    best = max(MODELS, key=lambda m: (per_model[m]["mean_quality"], -per_model[m]["mean_cost"]))
    return {"records": n, "chat_records": sum("messages" in r for r in records), "models": MODELS,
            "per_model": per_model, "oracle_quality": round(oq / n, 4), "oracle_mean_cost": sig4(oc / n),
            "best_single_model": best,
            "reference_router": {"quality": round(rq / n, 4), "mean_cost": sig4(rc / n), "rule": "cheapest model "
                                 "within 0.05 of the best expected p for the record's (task, difficulty)"}}


def write_outputs(records: list[dict], out_dir: Path) -> None:
    """Write traffic.jsonl and prices.toml: UTF-8, '\\n' line endings, fixed key order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "traffic.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    toml = ("# router-ml price catalog (format version 1), written by scripts/make_demo_data.py.\n"
            "# USD per 1M tokens; cost = (input_tokens * input_per_mtok + output_tokens * output_per_mtok) / 1e6\n")
    for m, (pin, pout) in PRICES.items():  # repr() round-trips each float exactly through TOML
        toml += f'\n["{m}"]\ninput_per_mtok = {pin!r}\noutput_per_mtok = {pout!r}\n'
    (out_dir / "prices.toml").write_text(toml, encoding="utf-8", newline="\n")


def main(argv: list[str] | None = None) -> dict:
    """Command line: generate, write the files, print the summary as one JSON line."""
    ap = argparse.ArgumentParser(description="Generate the router-ml demo traffic set.")
    ap.add_argument("--n", type=int, default=4000, help="number of records (default 4000)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--out-dir", type=Path, default=Path("data/demo"), help="output folder (default data/demo)")
    args = ap.parse_args(argv)
    if not 1 <= args.n <= 99999:  # sample ids have five digits
        ap.error(f"--n must be between 1 and 99999, got {args.n}")
    records = generate(args.n, args.seed)
    write_outputs(records, args.out_dir)
    summary = summarise(records)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
