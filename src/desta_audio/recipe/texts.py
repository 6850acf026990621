"""Sentences for synthetic speech: English from templates and slot lists, a hand-written set per other language.

The pools are fixed (independent of the build seed) so that which sentences are held out is a property of the
recipe, not of one build. English hold-out is by whole template (unseen sentence structures); the other languages
hold out every `HELDOUT_EVERY`-th sentence.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

HELDOUT_EVERY = 6  # non-English: sentences 0, 6, 12, ... of each list are held out


@dataclass(frozen=True)
class Sentence:
    text: str  # the transcript (what is said)
    language: str  # language code of LANGUAGES
    heldout: bool
    spoken: str | None = None  # what the synthesizer reads when it differs from `text` (Mandarin pinyin)

    @property
    def synth_text(self) -> str:
        return self.spoken or self.text


SLOTS: dict[str, list[str]] = {
    "place": ["station", "library", "bakery", "office", "park", "museum", "airport", "market", "hospital", "cafe"],
    "time": ["seven thirty", "noon", "half past two", "a quarter to nine", "six o'clock", "ten fifteen"],
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "count": ["two", "three", "four", "five", "twelve", "twenty"],
    "item": ["chairs", "apples", "tickets", "blankets", "notebooks", "bottles of water", "umbrellas", "candles"],
    "city": ["Boston", "Madrid", "Toronto", "Nairobi", "Osaka", "Lisbon", "Chicago", "Vienna"],
    "relative": ["sister", "brother", "cousin", "aunt", "uncle", "grandmother"],
    "job": ["a nurse", "a teacher", "a carpenter", "a pilot", "a chef", "a librarian", "an engineer"],
    "weather": ["sunny", "rainy", "windy", "cold", "warm", "cloudy", "foggy"],
    "chore": ["water the plants", "feed the cat", "lock the door", "pay the rent", "take out the trash"],
    "food": ["soup", "pasta", "rice", "salad", "pancakes", "curry", "bread"],
    "number": ["3", "7", "12", "25", "40", "58", "99", "150"],
    "color": ["red", "blue", "green", "yellow", "black", "white"],
    "vehicle": ["bus", "train", "ferry", "taxi", "bike"],
}

# (template, held out?) Slots are `{name}`; a slot may repeat with the same value.
TEMPLATES: list[tuple[str, bool]] = [
    ("I'll meet you at the {place} at {time}.", False),
    ("Could you bring {count} {item} to the {place}?", False),
    ("My {relative} lives in {city} and works as {job}.", False),
    ("It is going to be {weather} in {city} on {day}.", False),
    ("Did you remember to {chore} before you left?", False),
    ("We need {count} more {item} for the party on {day}.", False),
    ("The {vehicle} to {city} leaves at {time}.", False),
    ("How long does it take to walk to the {place} from here?", False),
    ("Please don't forget to {chore} on {day}.", False),
    ("There are {number} people waiting outside the {place}.", False),
    ("I made {food} for dinner, would you like some?", False),
    ("The {color} {vehicle} is parked next to the {place}.", False),
    ("Room {number} is on the second floor, next to the {place}.", False),
    ("Why is the {place} closed on {day}?", False),
    # held out: structures never seen in training
    ("Is it true that your {relative} became {job} in {city}?", True),
    ("Turn left after the {place}, then take the {color} {vehicle}.", True),
    ("I only paid {number} dollars for {count} {item}.", True),
]

ENGLISH_PER_TEMPLATE = 40

# Hand-written everyday sentences, questions and numbers. Mandarin is (characters, tone-numbered pinyin): the
# packaged espeak-ng reads characters poorly but pinyin well, and the transcript is the character text.
OTHER_LANGUAGES: dict[str, list[str] | list[tuple[str, str]]] = {
    "fr": [
        "Bonjour, comment allez-vous aujourd'hui ?", "Le train part à huit heures et quart.",
        "J'ai acheté trois baguettes à la boulangerie.", "Il fait très froid ce matin.",
        "Où se trouve la gare, s'il vous plaît ?", "Nous allons au cinéma samedi soir.",
        "Ma sœur habite à Lyon depuis deux ans.", "Pouvez-vous parler plus lentement ?",
        "Le musée ferme à dix-huit heures.", "Je voudrais un café et un croissant.",
        "Il y a vingt-cinq élèves dans la classe.", "Quelle heure est-il maintenant ?",
        "Les enfants jouent dans le jardin.", "Mon numéro de chambre est le quarante-deux.",
        "Nous avons besoin de pain et de lait.", "Tu viens avec nous à la plage demain ?",
        "La réunion commence dans dix minutes.", "J'aime beaucoup lire le dimanche.",
    ],
    "de": [
        "Guten Morgen, wie geht es Ihnen?", "Der Bus kommt in fünf Minuten.",
        "Ich habe zwei Karten für das Konzert.", "Heute regnet es den ganzen Tag.",
        "Wo ist die nächste Apotheke?", "Wir fahren am Wochenende nach Berlin.",
        "Mein Bruder arbeitet als Koch.", "Können Sie mir bitte helfen?",
        "Das Geschäft öffnet um neun Uhr.", "Ich möchte ein Glas Wasser, bitte.",
        "In unserem Haus wohnen dreißig Familien.", "Wann beginnt der Film heute Abend?",
        "Die Katze schläft auf dem Sofa.", "Mein Zimmer hat die Nummer siebzehn.",
        "Vergiss nicht, die Blumen zu gießen.", "Kommst du morgen mit ins Schwimmbad?",
        "Der Zug nach München hat Verspätung.", "Am Sonntag besuchen wir unsere Großeltern.",
    ],
    "es": [
        "Buenos días, ¿cómo estás?", "El autobús sale a las nueve y media.",
        "Compré cuatro naranjas en el mercado.", "Hoy hace mucho calor.",
        "¿Dónde está la biblioteca, por favor?", "Vamos a la playa el domingo.",
        "Mi prima vive en Sevilla.", "¿Puedes repetir la pregunta?",
        "La tienda cierra a las ocho.", "Quiero un té con limón, por favor.",
        "Hay cincuenta sillas en la sala.", "¿A qué hora empieza la clase?",
        "El perro duerme debajo de la mesa.", "Mi número de teléfono termina en treinta y tres.",
        "Necesitamos comprar arroz y huevos.", "¿Vienes a cenar con nosotros esta noche?",
        "El vuelo llega con una hora de retraso.", "Me gusta caminar por el parque.",
    ],
    "it": [
        "Buongiorno, come sta?", "Il treno parte alle dieci.",
        "Ho comprato sei mele al mercato.", "Oggi il cielo è nuvoloso.",
        "Dov'è la fermata dell'autobus?", "Andiamo in montagna questo fine settimana.",
        "Mio zio lavora in un ristorante a Roma.", "Può parlare più piano, per favore?",
        "La farmacia apre alle otto e mezza.", "Vorrei un cappuccino, grazie.",
        "Nella scuola ci sono trecento studenti.", "A che ora finisce il concerto?",
        "I bambini disegnano in cucina.", "La mia camera è la numero ventuno.",
        "Dobbiamo comprare la pasta e il formaggio.", "Vieni al cinema con noi stasera?",
        "La lezione è stata cancellata.", "Mi piace ascoltare la musica la sera.",
    ],
    "pt": [
        "Bom dia, tudo bem?", "O metrô chega em três minutos.",
        "Comprei duas melancias na feira.", "Está chovendo muito hoje.",
        "Onde fica o banco mais próximo?", "Vamos viajar para o Porto em julho.",
        "A minha avó faz um bolo delicioso.", "Você pode fechar a janela, por favor?",
        "O restaurante abre ao meio-dia.", "Eu quero um suco de laranja.",
        "Há quarenta livros nesta prateleira.", "Que horas são agora?",
        "O gato está dormindo na cadeira.", "O meu apartamento é o número oitenta.",
        "Precisamos de açúcar e café.", "Você vai à festa no sábado?",
        "A reunião foi adiada para amanhã.", "Gosto de correr de manhã cedo.",
    ],
    "hi": [
        "नमस्ते, आप कैसे हैं?", "आज मौसम बहुत अच्छा है।",
        "ट्रेन सुबह सात बजे चलेगी।", "मैंने बाज़ार से पाँच आम खरीदे।",
        "स्टेशन कहाँ है?", "हम रविवार को दिल्ली जाएँगे।",
        "मेरी बहन एक डॉक्टर है।", "क्या आप धीरे बोल सकते हैं?",
        "दुकान रात नौ बजे बंद होती है।", "मुझे एक कप चाय चाहिए।",
        "कक्षा में तीस बच्चे हैं।", "फ़िल्म कितने बजे शुरू होगी?",
        "बच्चे पार्क में खेल रहे हैं।", "कल बहुत बारिश हुई थी।",
        "कृपया दरवाज़ा बंद कर दीजिए।", "क्या तुम कल मेरे साथ चलोगे?",
        "मेरा घर स्कूल के पास है।", "मुझे किताबें पढ़ना पसंद है।",
    ],
    "ja": [
        "おはようございます。", "きょうはとてもいいてんきですね。",
        "えきはどこですか。", "コーヒーをひとつください。",
        "あしたはあめがふるそうです。", "わたしはまいあさろくじにおきます。",
        "このみせはなんじまでですか。", "でんしゃがごふんおくれています。",
        "いっしょにひるごはんをたべませんか。", "へやのばんごうはにじゅうさんです。",
        "にほんごをすこしはなせます。", "しゅうまつはやまにいきます。",
        "もうすこしゆっくりはなしてください。", "ねこがまどのそばでねています。",
        "きのうともだちとえいがをみました。", "いまなんじですか。",
        "このほんはとてもおもしろいです。", "みずをいっぱいください。",
    ],
    "zh": [
        ("你好，你叫什么名字？", "ni3 hao3, ni3 jiao4 shen2 me5 ming2 zi4?"),
        ("今天天气很好。", "jin1 tian1 tian1 qi4 hen3 hao3."),
        ("我们明天去北京。", "wo3 men5 ming2 tian1 qu4 bei3 jing1."),
        ("火车七点出发。", "huo3 che1 qi1 dian3 chu1 fa1."),
        ("请问，车站在哪里？", "qing3 wen4, che1 zhan4 zai4 na3 li3?"),
        ("我想喝一杯茶。", "wo3 xiang3 he1 yi4 bei1 cha2."),
        ("我妹妹是老师。", "wo3 mei4 mei5 shi4 lao3 shi1."),
        ("现在几点了？", "xian4 zai4 ji3 dian3 le5?"),
        ("商店九点关门。", "shang1 dian4 jiu3 dian3 guan1 men2."),
        ("教室里有三十个学生。", "jiao4 shi4 li3 you3 san1 shi2 ge4 xue2 sheng1."),
        ("你会说中文吗？", "ni3 hui4 shuo1 zhong1 wen2 ma5?"),
        ("我每天早上跑步。", "wo3 mei3 tian1 zao3 shang5 pao3 bu4."),
        ("猫在椅子上睡觉。", "mao1 zai4 yi3 zi5 shang5 shui4 jiao4."),
        ("请说慢一点。", "qing3 shuo1 man4 yi4 dian3."),
        ("周末我们去公园吧。", "zhou1 mo4 wo3 men5 qu4 gong1 yuan2 ba5."),
        ("这本书很有意思。", "zhe4 ben3 shu1 hen3 you3 yi4 si5."),
        ("明天会下雨吗？", "ming2 tian1 hui4 xia4 yu3 ma5?"),
        ("我的房间是八号。", "wo3 de5 fang2 jian1 shi4 ba1 hao4."),
    ],
}


def english_sentences() -> list[Sentence]:
    """Several hundred English sentences: `ENGLISH_PER_TEMPLATE` distinct fillings of each template."""
    rng = random.Random(20240607)  # fixed: the pool must not depend on the build seed
    sentences: list[Sentence] = []
    seen: set[str] = set()
    for template, heldout in TEMPLATES:
        names = sorted({name for _, name, _, _ in _fields(template)})
        combos = list(itertools.product(*(SLOTS[name] for name in names)))
        rng.shuffle(combos)
        for combo in combos[:ENGLISH_PER_TEMPLATE]:
            text = template.format(**dict(zip(names, combo, strict=True)))
            if text not in seen:
                seen.add(text)
                sentences.append(Sentence(text, "en", heldout))
    return sentences


def other_sentences(language: str) -> list[Sentence]:
    out = []
    for index, entry in enumerate(OTHER_LANGUAGES[language]):
        text, spoken = entry if isinstance(entry, tuple) else (entry, None)
        out.append(Sentence(text, language, heldout=index % HELDOUT_EVERY == 0, spoken=spoken))
    return out


def sentence_pool() -> dict[str, list[Sentence]]:
    """Language code -> sentences (train and held out)."""
    return {"en": english_sentences()} | {code: other_sentences(code) for code in OTHER_LANGUAGES}


def _fields(template: str):
    import string

    return [field for field in string.Formatter().parse(template) if field[1]]
