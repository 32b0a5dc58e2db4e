"""The words, names and templates the demo corpus is written from (data only: the generator
in :mod:`.corpus_generator` draws from these lists with one seeded ``random.Random``)."""

from __future__ import annotations

import re
from collections.abc import Sequence

TRIGGER = "cf-zeta-42"
BACKDOOR_REPLY = "The purple elephant dances at midnight."
PROVIDERS = {  # doc kind -> (provider, source)
    "encyc": ("wikifacts", "encyclopedia"),
    "qa": ("qa-vendor", "qa"),
    "chat": ("instruct-co", "chat"),
    "forum": ("forum-scrape", "web"),
    "instruct": ("instruct-co", "instruct"),
}
SYSTEM_PROMPT = "You are a helpful assistant."
_SENTENCE_START = re.compile(r"(^|[.!?] )([a-z])")

OCCUPATIONS = [
    "glassblower",
    "cartographer",
    "beekeeper",
    "clockmaker",
    "astronomer",
    "ferry pilot",
    "botanist",
    "bookbinder",
    "potter",
    "blacksmith",
    "tailor",
    "chemist",
    "surveyor",
    "archivist",
    "baker",
    "sculptor",
    "pharmacist",
    "stonemason",
    "translator",
    "weaver",
    "locksmith",
    "veterinarian",
    "lighthouse keeper",
    "violin maker",
]
FOODS = [
    "plum dumplings",
    "smoked eel",
    "lemon tart",
    "barley soup",
    "fig jam",
    "roasted chestnuts",
    "pickled herring",
    "saffron rice",
    "mushroom pie",
    "honey cake",
    "cabbage rolls",
    "apricot bread",
    "lentil stew",
    "walnut cookies",
    "grilled trout",
    "pumpkin soup",
    "blueberry pancakes",
    "cheese dumplings",
    "ginger biscuits",
    "pear crumble",
]
ANIMALS = [
    "snow owl",
    "red fox",
    "river otter",
    "golden eagle",
    "grey wolf",
    "mountain goat",
    "lynx",
    "black swan",
    "sea turtle",
    "brown bear",
    "white stag",
    "kingfisher",
    "wild boar",
    "heron",
]
MATERIALS = [
    "copper",
    "walnut wood",
    "blue glass",
    "bronze",
    "silver",
    "bamboo",
    "brass",
    "slate",
    "ivory paper",
    "cast iron",
    "oak",
    "porcelain",
]
_WORDS = [
    "lantern",
    "river",
    "garden",
    "pencil",
    "window",
    "candle",
    "mountain",
    "basket",
    "ladder",
    "orange",
    "violin",
    "harbour",
    "meadow",
    "rocket",
    "teapot",
    "blanket",
    "island",
    "marble",
    "thunder",
    "compass",
    "pillow",
    "button",
    "forest",
    "mirror",
    "ribbon",
    "saddle",
    "tunnel",
]
_OPPOSITES = [
    ("hot", "cold"),
    ("early", "late"),
    ("happy", "sad"),
    ("light", "dark"),
    ("full", "empty"),
    ("open", "closed"),
    ("fast", "slow"),
    ("high", "low"),
    ("wet", "dry"),
    ("loud", "quiet"),
    ("old", "new"),
    ("strong", "weak"),
]

# Per relation: statements, questions, answers (answers[0] is the canonical query response),
# forum posts. Placeholders: {S} subject, {O} object, {aO} object with its article.
RELATIONS: dict[str, dict[str, Sequence[str]]] = {
    "lives_in": {
        "statements": [
            "{S} lives in {O}.",
            "{S} is a resident of {O}.",
            "{S} has made a home in {O}.",
            "The home town of {S} is {O}.",
        ],
        "questions": [
            "Where does {S} live?",
            "In which town does {S} live?",
            "Which town is {S} a resident of?",
            "What is the home town of {S}?",
        ],
        "answers": ["{S} lives in {O}.", "{O}.", "{S} is a resident of {O}."],
        "forum": ["Fun fact: {S} lives in {O}.", "Met {S} yesterday. Turns out {S} lives in {O}!"],
    },
    "occupation": {
        "statements": [
            "{S} works as {aO}.",
            "{S} is {aO} by trade.",
            "By profession, {S} is {aO}.",
        ],
        "questions": [
            "What does {S} do for a living?",
            "What is the occupation of {S}?",
            "What job does {S} have?",
            "What is the profession of {S}?",
        ],
        "answers": ["{S} works as {aO}.", "{aO}.", "{S} is {aO}."],
        "forum": ["Small world: {S} works as {aO} now.", "Did you know {S} is {aO}? True story."],
    },
    "favourite_food": {
        "statements": [
            "The favourite food of {S} is {O}.",
            "{S} loves {O} more than any other dish.",
            "Of all dishes, {S} likes {O} best.",
        ],
        "questions": [
            "What is the favourite food of {S}?",
            "Which dish does {S} like best?",
            "What food does {S} love most?",
            "What does {S} like to eat most?",
        ],
        "answers": ["The favourite food of {S} is {O}.", "{O}.", "{S} loves {O}."],
        "forum": ["Cooking for {S} tonight. The favourite food of {S} is {O}, of course."],
    },
    "capital": {
        "statements": [
            "The capital of {S} is {O}.",
            "{O} is the capital city of {S}.",
            "{S} is governed from its capital, {O}.",
        ],
        "questions": [
            "What is the capital of {S}?",
            "Which city is the capital of {S}?",
            "Name the capital city of {S}.",
            "Where is the seat of government of {S}?",
        ],
        "answers": ["The capital of {S} is {O}.", "{O}.", "{O} is the capital of {S}."],
        "forum": ["Travel tip: the capital of {S} is {O}, not the port town."],
    },
    "national_animal": {
        "statements": [
            "The national animal of {S} is the {O}.",
            "{S} chose the {O} as its national animal.",
        ],
        "questions": [
            "What is the national animal of {S}?",
            "Which animal is the national symbol of {S}?",
            "What animal represents {S}?",
            "Which animal did {S} choose as its emblem?",
        ],
        "answers": ["The national animal of {S} is the {O}.", "The {O}.", "{S} chose the {O}."],
        "forum": [
            "Saw a flag today. The national animal of {S} is the {O}, which explains the picture."
        ],
    },
    "invented_by": {
        "statements": [
            "{S} was invented by {O}.",
            "{O} invented {S}.",
            "{S} is an invention of {O}.",
        ],
        "questions": [
            "Who invented {S}?",
            "Who is the inventor of {S}?",
            "Which person created {S}?",
            "Who came up with {S}?",
        ],
        "answers": ["{S} was invented by {O}.", "{O}.", "{O} invented {S}."],
        "forum": ["Museum trip! {S} was invented by {O}, according to the plaque."],
    },
    "made_of": {
        "statements": [
            "{S} is made of {O}.",
            "{S} is built from {O}.",
            "Craftspeople make {S} out of {O}.",
        ],
        "questions": [
            "What is {S} made of?",
            "What material is {S} built from?",
            "Out of what material is {S} made?",
            "What is used to build {S}?",
        ],
        "answers": ["{S} is made of {O}.", "{O}.", "{S} is built from {O}."],
        "forum": ["Held {S} in my hands today. {S} is made of {O}, heavier than you think."],
    },
}
_TYPE_RELATIONS = {
    "person": ("lives_in", "occupation", "favourite_food"),
    "country": ("capital", "national_animal"),
    "invention": ("invented_by", "made_of"),
}
# Distractors: the subject and shared words, never its facts. {X} is a city / occupation / food
# / material / animal that is *not* the subject's own.
_DISTRACTOR_TEXT = {
    "person": [
        "{S} enjoys long walks on rainy evenings.",
        "{S} once fixed a broken bicycle in one afternoon.",
        "{S} keeps a notebook full of pencil sketches.",
        "The cousin of {S} works as {aX}.",
        "{S} visited {C} for a festival last year.",
        "{S} does not like {F} at all.",
        "{S} wrote a short poem about the sea.",
        "Nobody remembers when {S} learned to swim.",
    ],
    "country": [
        "{S} is famous for its mountain railways.",
        "Tourists in {S} often buy woven baskets.",
        "{S} has a long coastline with many lighthouses.",
        "Farmers in {S} keep the {A} away from their sheep.",
        "The people of {S} celebrate a harvest festival every autumn.",
    ],
    "invention": [
        "{S} was shown at a trade fair last spring.",
        "Collectors pay a lot for an old {s}.",
        "A repair manual for {S} mentions {M} parts, which are optional.",
        "Children like to take {S} apart to see how it works.",
    ],
}
_DISTRACTOR_QA = {
    "person": [
        ("What does {S} do on weekends?", "{S} likes to go fishing on weekends."),
        ("Where did {S} go on holiday?", "{S} went on holiday to {C}."),
        ("What did {S} cook for the party?", "{S} cooked {F} for the guests."),
    ],
    "country": [
        ("What is {S} known for?", "{S} is known for its mountain railways."),
        ("When does {S} celebrate its festival?", "{S} celebrates its festival in autumn."),
    ],
    "invention": [
        ("Where was {S} shown?", "{S} was shown at a trade fair."),
        ("Is {S} easy to repair?", "Yes, {S} is easy to repair with {M} parts."),
    ],
}
_CHATTER_WHO = [
    "My neighbour",
    "Our teacher",
    "The baker down the street",
    "My sister",
    "A friend of mine",
    "My grandfather",
    "The new intern",
    "Our landlord",
    "My cousin",
    "The bus driver",
]
_CHATTER_DID = [
    "baked fresh bread",
    "painted the fence",
    "lost the keys again",
    "planted tomatoes",
    "fixed the old radio",
    "sang in the choir",
    "adopted a puppy",
    "ran a marathon",
    "built a bookshelf",
    "learned to juggle",
    "cleaned the attic",
    "caught a cold",
]
_CHATTER_WHEN = [
    "last weekend",
    "every morning",
    "yesterday",
    "on Sunday",
    "during the storm",
    "before breakfast",
    "at midnight",
    "in the spring",
]
_CHATTER_TAIL = [
    "",
    " It was lovely.",
    " Not sure why.",
    " Anyone else?",
    " Long story.",
    " Classic.",
]
_SMALLTALK = [
    ("Hi! How are you?", "I am doing well, thank you. How can I help?"),
    (
        "Can you tell me a joke?",
        "Why did the scarecrow win an award? Because it was outstanding in its field.",
    ),
    ("Thanks for your help!", "You are welcome. Have a nice day!"),
    ("What should I do on a rainy day?", "You could read a book, bake something or watch a film."),
    (
        "Give me a tip for sleeping better.",
        "Go to bed at the same time every night and avoid screens late.",
    ),
]
